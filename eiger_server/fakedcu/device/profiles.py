"""How the fake DCU sequences a series, as data: named behaviour profiles.

A :class:`Profile` is a frozen set of switches that the device model (and
the stream adapters, for the latency) consult; :data:`PROFILES` names the
presets. They follow SIMPLON.md, "How real DCUs behave": ``trigger`` may
return before the images are out, images reach the receiver some time after
any HTTP answer, ``inte``/``exte`` make one image per trigger, 1.8 disarms
by itself after every complete series and 1.6 only in ``ints``, and the
last image may only leave at ``disarm``.

``ideal`` is the fake's historical behaviour (every trigger returns when its
images are streamed, ``nimages`` images per trigger in every mode, every
complete series ends on its own) and stays the default so that tests which
do not care keep their timing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

__all__ = ["Profile", "PROFILES", "TRIGGER_RETURNS", "AUTO_DISARM", "profile_named"]

TRIGGER_RETURNS = ("images_out", "after_exposure", "immediately")
AUTO_DISARM = ("always", "ints_only", "never")


@dataclass(frozen=True)
class Profile:
    """The behaviour switches of one kind of DCU.

    * ``trigger_returns``: when ``PUT command/trigger`` answers —
      ``images_out`` (its frames are made and queued for the stream),
      ``after_exposure`` (the exposure has elapsed; frames may still be on
      their way) or ``immediately``.
    * ``stream_latency``: seconds each stream message waits before it is sent.
    * ``one_image_per_trigger``: ``inte``/``exte`` make one image per trigger
      and ``arm`` refuses ``nimages`` other than 1 in those modes.
    * ``auto_disarm``: a complete series ends on its own ``always`` (SIMPLON
      1.8), in ``ints_only`` (1.6) or ``never``; otherwise it stays armed
      until ``disarm``.
    * ``last_image_at_disarm``: in a series that does not end on its own, the
      last image (for the stream and the file writer) leaves only at
      ``disarm`` or ``cancel``.
    * ``api``: the SIMPLON version the profile describes (None: any).
    * ``bit_depth_follows_count_time``: EIGER2 on 1.8 picks ``bit_depth_image``
      from the count time (8/16/32-bit at 10/20/100 ms) and lists it among a
      ``count_time`` PUT's changed names.
    * ``files``: the FileWriter, ``initialize`` and ``restart`` behaviour, a
      preset of ``filewriter_profile.PRESETS`` (``FakeDCUApp(files_profile=)``
      and ``--files-profile`` override it).
    """

    name: str
    trigger_returns: str = "images_out"
    stream_latency: float = 0.0
    one_image_per_trigger: bool = False
    auto_disarm: str = "always"
    last_image_at_disarm: bool = False
    api: Optional[str] = None
    files: str = "simple"
    bit_depth_follows_count_time: bool = False

    def __post_init__(self) -> None:
        if self.trigger_returns not in TRIGGER_RETURNS:
            raise ValueError(f"profile {self.name}: trigger_returns {self.trigger_returns!r} "
                             f"is not one of {TRIGGER_RETURNS}")
        if self.auto_disarm not in AUTO_DISARM:
            raise ValueError(f"profile {self.name}: auto_disarm {self.auto_disarm!r} is not "
                             f"one of {AUTO_DISARM}")
        if not 0.0 <= self.stream_latency <= 60.0:
            raise ValueError(f"profile {self.name}: stream_latency must be 0..60 s")

    def ends_by_itself(self, trigger_mode: str) -> bool:
        """Does a complete series in ``trigger_mode`` end without ``disarm``?"""
        return self.auto_disarm == "always" or (
            self.auto_disarm == "ints_only" and trigger_mode == "ints")

    def images_per_trigger(self, trigger_mode: str, nimages: int) -> int:
        """Images one trigger (or enable gate) makes."""
        if self.one_image_per_trigger and trigger_mode in ("inte", "exte"):
            return 1
        return nimages


PROFILES: Dict[str, Profile] = {p.name: p for p in (
    Profile("ideal"),
    # A current DCU: trigger answers once the exposure is over, the stream
    # follows a little later, one image per inte/exte trigger, every complete
    # series disarms itself.
    Profile("simplon-1.8-real", trigger_returns="after_exposure", stream_latency=0.05,
            one_image_per_trigger=True, auto_disarm="always", api="1.8.0", files="dectris",
            bit_depth_follows_count_time=True),
    # An EIGER1 DCU on 1.6: only ints series end by themselves; in the other
    # modes the last image and file come out at disarm.
    Profile("simplon-1.6-real", trigger_returns="after_exposure", stream_latency=0.05,
            one_image_per_trigger=True, auto_disarm="ints_only", last_image_at_disarm=True,
            api="1.6.0", files="dectris"),
    # Public simulators: trigger answers at once, the images follow 300 ms later.
    Profile("eager-simulator", trigger_returns="immediately", stream_latency=0.3,
            one_image_per_trigger=True, auto_disarm="always"),
)}


def profile_named(profile: Union[str, Profile, None]) -> Profile:
    """A preset by name (None: ``ideal``), or the profile given."""
    if profile is None:
        return PROFILES["ideal"]
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown fake DCU profile {profile!r}; presets: "
                         f"{', '.join(PROFILES)}") from None
