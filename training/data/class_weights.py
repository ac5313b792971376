"""Cross-entropy class weights of the datasets the committed configs train on (training only)."""

CAMVID_CLASS_WEIGHTS = [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614]
"""CamVid's 11 classes weighted by median-frequency balancing (each class's median pixel frequency over its own
frequency), the values the SegNet tutorial's CamVid training prototxts set: rare thin classes (pole, sign,
pedestrian, bicyclist) count more."""
