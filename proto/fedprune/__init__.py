"""Versioned protocol packages of fedprune (generated stubs live under ``proto.fedprune.v1``)."""
