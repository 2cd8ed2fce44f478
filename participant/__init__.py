"""The participant: computes local keep-votes from its own calibration data (and, later, the daemon)."""
