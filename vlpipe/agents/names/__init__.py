"""Object names: parsed from MLLM answers (:mod:`.parse`, over the tag :mod:`.gazetteer`), mapped
to a dataset's categories (:mod:`.vocabulary`)."""
