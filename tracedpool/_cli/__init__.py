"""The command-line room: ``tracedpool`` and ``python -m tracedpool``.

- ``main``: a thin argparse layer; every command is a library function of another room.
"""
