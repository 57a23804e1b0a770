"""Merging detections of several views: NMS/NMM (:mod:`.merging`) over a sweep of box pairs
(:mod:`.box_pairs`, :mod:`.greedy_overlap`), the node (:mod:`.node`)."""
