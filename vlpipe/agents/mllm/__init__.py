"""The multimodal LLM: backends (:mod:`.model`, :mod:`.served`), families (:mod:`.families`),
nodes (:mod:`.nodes`, :mod:`.need_tool`), VL-SAM attention (:mod:`.attention`,
:mod:`.flow_attention`), image-token layouts and box texts per family."""
