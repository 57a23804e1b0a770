"""OCR: backends (:mod:`.backends`) and the node (:mod:`.node`)."""
