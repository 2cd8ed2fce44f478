"""Privacy layers: randomized response, calibration-statistics noise, secure aggregation, accounting."""
