"""Open-world object detection: ORE (Joseph et al., CVPR 2021) on torchvision's Faster R-CNN.

`scenes.py` digit scenes, `datasets.py` VOC/COCO loaders, `tasks.py` the task protocol,
`model.py` the detector, `ore.py` ORE's parts, `metrics.py` the OWOD metrics, `engine.py` the
loops, `stage.py` the `detect` stage, `figures.py`, `predict.py`.
"""
