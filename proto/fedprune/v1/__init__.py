"""Protocol version 1: ``.proto`` sources and the committed stubs generated from them.

Regenerate with ``python -m proto.generate`` (or ``scripts/gen_proto.sh``); ``tests/proto`` fails when the
committed stubs do not match the sources.
"""
