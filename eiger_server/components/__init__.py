"""What image_par components are: the registry rows bind to (binding.py) and
the narrow interfaces they are given instead of the controller (protocols.py).
Below control/ and stream/, so both can use them."""
