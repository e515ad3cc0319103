"""The protocol's reference server (certif-pyspec's HardwareServer) serving a
known image, for the differential tests of test_wire_reference.py.

Run as ``python reference_hdw.py -p PORT -L LOCK [--image FILE.npz]``. The
``.npz`` holds ``raw`` (what ``read`` sends) and ``summed`` (what ``get_roi``
sums: the same image with the pixels EIGER masks set to 0, since eiger_server
leaves masked pixels out of sums). Without ``--image`` no data is ready.
"""
import numpy as np
from pyspec.hardware.server import HardwareServer


class ReferenceImageServer(HardwareServer):
    description = "reference"

    def configure_server(self):
        self.add_option("-i", "--image", dest="image", type="str", default=None)

    def init_server(self):
        self.set_data_dims(2)
        self.raw = self.data = None
        if self.settings.image:
            arrays = np.load(self.settings.image)
            self.raw, self.data = arrays["raw"], arrays["summed"]
        self.wire_type = "ushort" if self.raw is not None and self.raw.itemsize == 2 else "ulong"

    def config_hdw(self, address):
        rows, cols = self.raw.shape if self.raw is not None else (0, 0)
        return "%s %d %d" % (self.wire_type, rows, cols)

    def get_data(self, *args):
        if self.raw is None:
            return None, True
        if not args:
            return self.raw, self.wire_type
        r0, r1, c0, c1 = (int(a) for a in args)
        return self.raw[r0:r1 + 1, c0:c1 + 1], self.wire_type


if __name__ == "__main__":
    ReferenceImageServer().run()
