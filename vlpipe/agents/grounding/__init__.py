"""Open-vocabulary grounding: backends (:mod:`.dino`, :mod:`.owlv2`, :mod:`.sam3`), the node
(:mod:`.node`), crops of grounded boxes (:mod:`.crops`), detect's fused branch (:mod:`.fusion`)."""
