"""SAM: backends (:mod:`.backends`, :mod:`.sam3`), point prompts from attention maps
(:mod:`.points`), masks in box crops (:mod:`.masks`), the nodes (:mod:`.nodes`)."""
