# cython: language_level=3
# Placeholder so the build has something to compile; the relay lands here.
IMPLEMENTATION = "native"
