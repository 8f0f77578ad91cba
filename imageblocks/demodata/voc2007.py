"""What the real PASCAL VOC 2007 looks like to the demo: its classes, the label sets of its
images with their train/valid/test counts, and its image sizes.

Hand-written from VOC 2007's annotation lists, so the demo's label statistics and split are the
real dataset's, without downloading it.
"""

from __future__ import annotations

import numpy as np

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def voc_size(rng: np.random.Generator) -> tuple[int, int]:
    """A (width, height) drawn like VOC 2007's: mostly 500 x 333..375, some portrait, a few odd."""
    r = rng.random()
    short = int(rng.choice([375, 333, int(rng.integers(334, 375))], p=[0.6, 0.2, 0.2]))
    if r < 0.7:
        return 500, short
    if r < 0.92:
        return short, 500
    return int(rng.integers(300, 501)), int(rng.integers(220, 501))


def voc_rows(split: str) -> list[tuple[str, bool]]:
    """(labels, is_valid) of every real VOC 2007 image in `split` ('train' or 'test')."""
    rows: list[tuple[str, bool]] = []
    for entry in " ".join(_VOC2007_LABEL_SETS.split()).split(";"):
        labels, counts = entry.strip().rsplit(":", 1)
        n_train, n_valid, n_test = (int(n) for n in counts.split(","))
        if split == "train":
            rows += [(labels, False)] * n_train + [(labels, True)] * n_valid
        else:
            rows += [(labels, False)] * n_test
    return rows


# Label sets of the real PASCAL VOC 2007 images: "labels:n_train,n_valid,n_test" per distinct set
# (labels in their most common annotation order), from the trainval and test annotation lists.
_VOC2007_LABEL_SETS = """
person:208,200,455; car:197,179,398; bird:159,134,256; dog:97,137,247; cat:121,121,238; horse
person:92,109,205; train:95,98,203; aeroplane:91,109,169; car person:79,82,185; bicycle
person:59,73,137; motorbike person:62,68,125; boat:55,65,109; cow:46,52,93;
pottedplant:48,41,84; chair person:40,41,78; dog person:47,31,78; tvmonitor:37,37,80;
sheep:37,39,75; sofa person:33,42,73; bicycle:25,34,76; bottle person:40,29,58; bus:31,27,65;
chair:27,30,64; motorbike:30,33,56; horse:31,28,53; sofa:20,29,60; chair diningtable:21,27,58;
bottle:32,23,50; train person:20,29,44; boat person:13,28,50; person chair
diningtable:21,17,46; tvmonitor person:22,23,38; bus person:20,20,40; bus car:21,27,30; sofa
chair:13,18,32; diningtable person:17,14,30; tvmonitor chair:11,16,31; bus car
person:13,12,31; aeroplane person:12,15,24; motorbike person car:13,12,23; cow
person:10,16,22; bird person:17,8,19; bottle person diningtable:12,9,23; dog sofa:12,9,22;
sofa chair person:12,6,24; pottedplant person:12,10,19; cat person:9,9,19; diningtable person
bottle chair:12,6,13; tvmonitor person chair:7,7,16; tvmonitor chair sofa:13,6,11; chair
pottedplant:4,5,20; cat chair:6,11,10; dog person sofa:10,4,13; dog chair:4,8,13; sofa
pottedplant:3,5,17; diningtable bottle chair:5,9,8; chair diningtable pottedplant:5,5,12;
sheep person:4,4,13; motorbike car:4,4,12; sofa chair pottedplant:6,4,10; bottle chair
person:5,6,8; sofa chair diningtable:5,6,8; train car:7,5,6; dog person chair:4,7,7; sofa
person bottle:5,1,11; chair pottedplant person:7,1,9; bicycle person car:8,3,5; horse person
car:6,3,7; cat pottedplant:5,6,5; cat sofa:3,7,5; diningtable:2,3,10; tvmonitor sofa:6,5,4;
sofa person pottedplant:4,2,8; cat dog:3,2,8; cat tvmonitor:1,4,8; bicycle car:3,5,4;
diningtable chair pottedplant person:4,4,4; bus car bicycle person:4,3,4; tvmonitor person
sofa:2,3,6; aeroplane car:3,2,5; tvmonitor person bottle:3,1,6; cat bottle:1,0,8; bottle
person pottedplant:3,0,6; tvmonitor bottle:4,3,2; sofa tvmonitor chair diningtable:3,2,4; cow
horse person:7,0,2; tvmonitor pottedplant:4,1,4; motorbike bicycle person:3,3,2; car
boat:5,0,3; train car person:3,2,3; diningtable chair tvmonitor:4,3,1; bicycle person
bus:3,2,2; cow bird:1,3,3; bottle person diningtable pottedplant:1,2,4; car bus motorbike
person:2,2,3; sofa car:0,5,2; cat person sofa:2,2,3; sofa chair person pottedplant:4,1,2;
person diningtable pottedplant:5,2,0; dog horse person:1,4,2; dog pottedplant:0,0,7; boat car
person:3,0,3; bottle pottedplant:2,0,4; cat car:2,0,4; person chair car:0,2,4; dog cat
sofa:3,1,2; sheep dog:3,0,3; tvmonitor sofa pottedplant:0,4,2; chair bicycle:2,1,2; boat
bird:0,3,2; diningtable chair pottedplant bottle person:2,1,2; diningtable bottle:1,1,3; car
chair:1,1,3; dog person car:2,1,2; tvmonitor person cat:0,1,4; tvmonitor dog:2,0,3; aeroplane
person car:1,0,3; bicycle person bottle:1,1,2; bicycle person chair:1,2,1; person bottle sofa
chair:1,0,3; tvmonitor chair bottle:2,1,1; bus person motorbike:3,0,1; cow car person:2,1,1;
sofa person car:3,0,1; car tvmonitor person:1,1,2; car pottedplant:2,0,2; cat chair
diningtable:1,2,1; tvmonitor cat chair:1,0,3; sofa chair diningtable pottedplant:1,1,2; chair
sofa pottedplant tvmonitor:1,1,2; chair pottedplant tvmonitor:1,2,1; tvmonitor dog
person:2,1,1; horse person pottedplant:2,1,1; aeroplane boat:3,0,0; bicycle bottle:2,0,1; dog
bicycle person:0,0,3; bicycle pottedplant:1,2,0; person bird boat:1,0,2; bird car:2,1,0; bird
pottedplant:1,0,2; cow person boat:1,1,1; bottle chair:0,1,2; diningtable chair bottle
sofa:0,2,1; bottle person chair tvmonitor:1,1,1; bottle diningtable person sofa:0,1,2; dog
bottle:1,1,1; person sofa pottedplant bottle:2,0,1; sheep bottle person:0,2,1; sofa
bottle:1,0,2; dog car:1,0,2; horse car:1,1,1; car pottedplant person:1,1,1; tvmonitor
car:0,0,3; chair person cat:1,1,1; tvmonitor sofa cat:0,2,1; sofa person chair
diningtable:0,3,0; diningtable chair tvmonitor person:0,0,3; person dog chair
pottedplant:0,1,2; tvmonitor sofa pottedplant chair person:1,0,2; tvmonitor chair sofa
person:1,1,1; dog horse:1,2,0; sheep horse:0,1,2; bus aeroplane:0,0,2; bicycle boat:0,1,1;
bicycle diningtable chair:0,1,1; motorbike bicycle person chair:1,0,1; sofa pottedplant
tvmonitor chair bicycle person:2,0,0; dog bicycle:1,0,1; bicycle sofa person:1,0,1; person
bicycle tvmonitor:2,0,0; sofa bicycle:1,0,1; tvmonitor bicycle:0,0,2; dog bird:1,0,1; sheep
bird:0,0,2; dog person boat:1,1,0; motorbike boat person:1,0,1; pottedplant boat person:1,0,1;
bottle car person:1,1,0; bottle chair diningtable pottedplant:1,0,1; person chair bottle
pottedplant:1,1,0; sofa chair pottedplant bottle tvmonitor:1,1,0; dog person bottle:1,0,1;
bottle tvmonitor person sofa:1,0,1; cow car:0,0,2; horse person dog car:0,0,2; car person
sheep:1,0,1; sofa pottedplant cat chair person:1,0,1; cat person chair sofa:0,1,1; cat sofa
chair pottedplant:1,1,0; cat diningtable:0,1,1; dog cat person:0,0,2; dog cat person
sofa:0,0,2; sheep cow:1,1,0; dog person diningtable:1,1,0; sofa diningtable person:1,0,1;
person diningtable tvmonitor:0,1,1; dog person pottedplant:0,2,0; sheep person dog:2,0,0;
person motorbike pottedplant:1,1,0; person bus aeroplane car:1,0,0; aeroplane pottedplant car
bus:0,0,1; aeroplane car motorbike:0,0,1; aeroplane chair:0,1,0; person aeroplane
tvmonitor:1,0,0; aeroplane sheep:1,0,0; sofa bottle bicycle:0,0,1; bus bicycle car:1,0,0;
bicycle cat person:0,1,0; chair sofa bicycle tvmonitor:0,1,0; cow person bicycle
motorbike:1,0,0; bicycle person pottedplant:0,0,1; bicycle person train:0,0,1; boat car
bird:0,0,1; horse bird bottle pottedplant:0,0,1; chair bird:0,1,0; pottedplant bird
chair:0,1,0; boat bus:0,1,0; boat bus car person:1,0,0; bus person boat:0,0,1; boat chair
diningtable:0,0,1; boat pottedplant chair diningtable person sofa dog:1,0,0; chair diningtable
person boat:0,1,0; train boat:1,0,0; bus car bottle person:0,1,0; car bottle:0,0,1; chair car
bottle:1,0,0; bottle person diningtable car:0,0,1; horse person bottle car:1,0,0; person
bottle car pottedplant:0,0,1; tvmonitor bottle chair cat:1,0,0; cat person diningtable
bottle:0,1,0; cat bottle dog person:0,0,1; cat pottedplant bottle:0,0,1; cat bottle
tvmonitor:1,0,0; bottle person sofa pottedplant chair diningtable:0,0,1; chair diningtable
tvmonitor person pottedplant bottle:0,1,0; chair diningtable sofa person bottle:1,0,0; bottle
dog chair:1,0,0; dog chair person bottle:0,0,1; bottle pottedplant chair:0,0,1; sofa chair
bottle:0,0,1; sofa chair tvmonitor bottle:0,1,0; cow bottle person:0,1,0; tvmonitor person
bottle diningtable:1,0,0; bottle dog pottedplant:1,0,0; sheep horse person bottle:0,0,1;
motorbike person bottle:0,0,1; car person dog bus:0,1,0; bus car motorbike:0,0,1; pottedplant
car bus:0,0,1; bus train person:0,1,0; train bus:0,0,1; cat person car:0,0,1; dog chair car
person:0,0,1; car pottedplant motorbike chair:0,0,1; tvmonitor chair person car:0,0,1; car
chair pottedplant:1,0,0; sofa chair car:0,0,1; cow horse person car:0,0,1; car person
diningtable:0,0,1; dog sofa car pottedplant person:1,0,0; car dog person sofa:1,0,0;
pottedplant motorbike car:1,0,0; tvmonitor motorbike car:0,0,1; train car pottedplant:1,0,0;
sheep car:0,1,0; sofa tvmonitor car:0,0,1; chair diningtable cat person:0,1,0; sofa chair
diningtable pottedplant cat:0,1,0; cat dog chair:0,1,0; pottedplant person cat chair:0,1,0;
sofa cat chair tvmonitor person:1,0,0; cat chair pottedplant:1,0,0; cat dog sofa
tvmonitor:0,0,1; person cat sofa pottedplant:1,0,0; tvmonitor sofa person cat
pottedplant:0,0,1; pottedplant dog tvmonitor diningtable chair:1,0,0; tvmonitor chair sofa
diningtable dog:0,0,1; diningtable sofa pottedplant chair person:1,0,0; tvmonitor chair sofa
person diningtable:0,0,1; diningtable chair pottedplant tvmonitor:0,1,0; motorbike dog person
chair:0,0,1; tvmonitor person pottedplant chair sofa dog:0,1,0; dog person sofa chair:0,1,0;
sofa pottedplant chair dog:1,0,0; tvmonitor dog sofa chair:1,0,0; horse person chair:1,0,0;
motorbike chair sofa:0,1,0; tvmonitor chair person pottedplant:0,0,1; cow dog:1,0,0; cow
horse:0,0,1; motorbike person cow:1,0,0; cow pottedplant:0,0,1; dog pottedplant
diningtable:0,0,1; diningtable person pottedplant tvmonitor:0,1,0; pottedplant
diningtable:0,1,0; sofa diningtable pottedplant:0,1,0; motorbike dog:0,1,0; motorbike person
dog:0,1,0; dog sofa person pottedplant:0,0,1; dog sofa pottedplant tvmonitor:0,1,0; tvmonitor
pottedplant dog:1,0,0; pottedplant horse:0,1,0; train horse:1,0,0; train person
motorbike:0,0,1; tvmonitor motorbike person:0,0,1; motorbike pottedplant:0,0,1; tvmonitor
person pottedplant:0,0,1
"""
