"""Preprocessing: the head-and-neck ROI on one 1 mm grid (``roi``) and the networks' intensity
normalisation (``normalise``), one implementation for training and inference."""
