"""The class lists of the official open-vocabulary evaluation (``eval_diffcut_openvoc.py``), class 0 = background.

The names with synonyms are FC-CLIP's prompt-engineered lists (``*_with_prompt_eng.txt``) that the official
detectron2 metadata registers: ``openvocab_pascal21_sem_seg_val`` (21 classes, its own background entry with many
stuff synonyms), ``openvocab_pascal_ctx59_sem_seg_val`` and ``openvocab_coco_2017_val_panoptic`` (thing classes),
to which the official script prepends a plain ``"background"`` class. Torch-free.
"""

from __future__ import annotations

from typing import Dict

from .vocabulary import Vocabulary, split_synonyms

__all__ = ["OPEN_VOCAB_DATASETS", "official_vocabulary", "CLIP_IMAGE_SIZE"]

VOC21_CLASSES = (
    "background,crops,bush,shrub,tiles,pavement,rug,carpet,box,boxes,speaker,storage,painting,board,panel,"
    "poster,clock,cage,drinking glass,park,plaything,toy,fireplace,bag,bag,bed,bench,book,books,building,"
    "buildings,cabinet,drawer,ceiling,computer,computer case,cup,cups,door,fence,floor,flower,grass,lawn,"
    "turf,ground,soil,dirt,tiles,keyboard,lamp,mountain,hills,mouse,curtain,platform,sign,street,rock,"
    "stone,shelf,sidewalk,sky,clouds,snow,track,train track,tree,trees,wall,water,window,wood,woods",
    "aeroplane,airplane,aeroplanes,airplanes",
    "bicycle,bicycles,bike,bikes",
    "bird,birds",
    "boat,boats",
    "bottle,bottles,water bottle",
    "bus,buses",
    "car,cars",
    "cat,cats,kitties,kitty",
    "chair,chairs",
    "cow,cows,calf",
    "diningtable,dining table,diningtables,dining tables,plate,plates",
    "dog,dogs,puppy,puppies",
    "horse,horses,foal",
    "motorbike,motorcycle,motorbikes,motorcycles",
    "person,child,girl,boy,woman,man,people,childeren,girls,boys,women,men,lady,guy,ladies,guys,clothes",
    "pottedplant,pottedplants,plant pot,plant pots,planter,planters",
    "sheep",
    "sofa,sofas",
    "train,trains,locomotive,locomotives,freight train",
    "tvmonitor,monitor,tv",
)

CONTEXT59_CLASSES = (
    "aeroplane,aeroplanes,airplanes,airplane",
    "bag,bags",
    "bed,beds",
    "bedclothes",
    "bench,benches",
    "bicycle,bicycles",
    "bird,birds",
    "boat,boats",
    "book,books",
    "bottle,bottles,water bottle",
    "building,buildings",
    "bus,buses",
    "cabinet,cabinets,drawer,drawers",
    "car,cars",
    "cat,cats,kitties,kitty",
    "ceiling",
    "chair,chairs",
    "cloth,clothes",
    "computer case",
    "cow,cows",
    "cup,cups",
    "curtain,curtains",
    "dog,dogs,puppy,puppies",
    "door,doors",
    "fence,fences",
    "floor,tile ground,carpet,rug,flooring",
    "flower,flowers",
    "food",
    "grass,grasses,lawn,turf",
    "ground,soil,soil ground,dirt ground",
    "horse,horses,foal",
    "keyboard,keyboards",
    "lamp,lamps,bulb,bulbs",
    "motorbike,motorcycle,motorbikes,motorcycles",
    "mountain,mountains",
    "mouse",
    "person,child,girl,boy,woman,man,people,childeren,girls,boys,women,men,lady,guy,ladies,guys",
    "plate,plates",
    "platform,platforms",
    "pottedplant,pottedplants,plant pot,plant pots,planter,planters",
    "street,streets",
    "rock,rocks,stone,stones",
    "sheep",
    "shelves,shelf",
    "sidewalk",
    "sign,signs",
    "sky,clouds",
    "snow",
    "sofa",
    "diningtable,diningtables,table,tables,desk,desks,side table,side tables,coffee table",
    "track,train track,railroad",
    "train,trains,locomotive,locomotives,freight train",
    "tree,trees",
    "truck,trucks",
    "tvmonitor,monitor,tv",
    "wall,walls",
    "water",
    "window,windows",
    "wood piece",
)

COCO_OBJECT80_CLASSES = (
    "person,child,girl,boy,woman,man,people,children,girls,boys,women,men,lady,guy,ladies,guys,clothes",
    "bicycle,bicycles,bike,bikes",
    "car,cars",
    "motorcycle,motorcycles",
    "airplane,airplanes",
    "bus,buses",
    "train,trains,locomotive,locomotives,freight train",
    "truck,trucks",
    "boat,boats",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench,benches",
    "bird,birds",
    "cat,cats,kitties,kitty",
    "dog,dogs,puppy,puppies",
    "horse,horses,foal",
    "sheep",
    "cow,cows,calf",
    "elephant,elephants",
    "bear,bears",
    "zebra,zebras",
    "giraffe,giraffes",
    "backpack,backpacks",
    "umbrella,umbrellas",
    "handbag,handbags",
    "tie",
    "suitcase,suitcases",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite,kites",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle,bottles,water bottle",
    "wine glass,wine glasses,wineglass",
    "cup,cups,water cup,water glass",
    "fork,forks",
    "knife,knives",
    "spoon,spoons",
    "bowl,bowls",
    "banana,bananas",
    "apple,apples,apple fruit",
    "sandwich,sandwiches",
    "orange fruit",
    "broccoli",
    "carrot,carrots",
    "hot dog",
    "pizza",
    "donut,donuts",
    "cake,cakes",
    "chair,chairs",
    "couch,sofa,sofas",
    "potted plant,potted plants,pottedplant,pottedplants,planter,planters",
    "bed,beds",
    "dining table,dining tables,diningtable,diningtables,plate,plates,diningtable tablecloth",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "tv remote,remote control",
    "keyboard",
    "cell phone,mobile",
    "microwave",
    "oven,ovens",
    "toaster",
    "sink,sinks",
    "refrigerator,fridge",
    "book,books",
    "clock",
    "vase,vases",
    "scissor,scissors",
    "teddy bear,teddy bears",
    "hair drier",
    "toothbrush,toothbrushes",
)

#: Dataset key (as in :mod:`diffcut_engine.eval.datasets`) -> class list, background first.
OPEN_VOCAB_DATASETS: Dict[str, tuple] = {
    "voc": VOC21_CLASSES,
    "context": ("background",) + CONTEXT59_CLASSES,
    "coco-object": ("background",) + COCO_OBJECT80_CLASSES,
}

#: Side of the square image CLIP sees in the official evaluation: the 1024 px image, COCO upscaled to 2048.
CLIP_IMAGE_SIZE: Dict[str, int] = {"voc": 1024, "context": 1024, "coco-object": 2048}


def official_vocabulary(dataset: str) -> Vocabulary:
    """The official open-vocabulary class list of ``voc``, ``context`` or ``coco-object`` (21, 60 and 81 classes;
    class 0 is the background, class k the dataset's class k-1)."""
    from ..errors import InputError

    if dataset not in OPEN_VOCAB_DATASETS:
        raise InputError(f"no open-vocabulary class list for {dataset!r}; choose one of "
                         f"{', '.join(OPEN_VOCAB_DATASETS)}")
    return Vocabulary(tuple(split_synonyms(c) for c in OPEN_VOCAB_DATASETS[dataset]))
