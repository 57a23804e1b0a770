"""Views of an image: the tile grid (:mod:`.grid`) and the node (:mod:`.node`)."""
