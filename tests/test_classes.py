"""Shipped class lists: ImageNet's 1000 names, and the subsets' WordNet IDs and order."""

from distill.data.classes import imagenet_by_wnid, imagenet_classes, imagenet_name
from tests.conftest import compose

# NOTES.md: ImageNet index, WordNet ID, name.
WOOF = [
    (155, "n02086240", "Shih-Tzu"),
    (159, "n02087394", "Rhodesian ridgeback"),
    (162, "n02088364", "beagle"),
    (167, "n02089973", "English foxhound"),
    (182, "n02093754", "Border terrier"),
    (193, "n02096294", "Australian terrier"),
    (207, "n02099601", "golden retriever"),
    (229, "n02105641", "Old English sheepdog"),
    (258, "n02111889", "Samoyed"),
    (273, "n02115641", "dingo"),
]
NETTE = [
    (0, "n01440764", "tench"),
    (217, "n02102040", "English springer"),
    (482, "n02979186", "cassette player"),
    (491, "n03000684", "chain saw"),
    (497, "n03028079", "church"),
    (566, "n03394916", "French horn"),
    (569, "n03417042", "garbage truck"),
    (571, "n03425413", "gas pump"),
    (574, "n03445777", "golf ball"),
    (701, "n03888257", "parachute"),
]


def test_imagenet_table():
    table = imagenet_classes()
    assert len(table) == 1000
    wnids = [c.wnid for c in table]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert [c.index for c in table] == list(range(1000))
    assert all(c.name and c.clip_name for c in table)
    # Neither naming is unique: two classes share each of these names.
    dup = lambda attr: sorted(
        {
            getattr(c, attr)
            for c in table
            if sum(getattr(d, attr) == getattr(c, attr) for d in table) > 1
        }
    )
    assert dup("name") == ["crane", "maillot"] and dup("clip_name") == ["missile", "sunglasses"]


def test_imagewoof_and_imagenette_match_notes():
    for data, expect in (("imagewoof", WOOF), ("imagenette", NETTE)):
        cfg = compose("distill", [f"data={data}"])
        assert list(cfg.data.classes) == [w for _, w, _ in expect]
        for idx, wnid, name in expect:
            assert imagenet_by_wnid()[wnid].index == idx
            assert imagenet_name(wnid) == name


def test_imagenet100_is_the_cmc_list():
    cfg = compose("distill", ["data=imagenet100"])
    cls = list(cfg.data.classes)
    assert len(cls) == 100 and set(cls) <= set(imagenet_by_wnid())
    # A few spot checks of CMC's imagenet100.txt.
    assert {"n02869837", "n01749939", "n02488291", "n02090622", "n01855672"} <= set(cls)
