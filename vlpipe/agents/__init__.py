"""The experts, one package each; in each, the nodes (what a pipeline file names) apart from the
backends (what loads and runs a model, registered in :mod:`.backends`):

- :mod:`.mllm`: the multimodal LLM: its backends (:mod:`.mllm.model` local weights,
  :mod:`.mllm.served` an endpoint), its families (:mod:`.mllm.families`), the nodes
  (:mod:`.mllm.nodes`, :mod:`.mllm.need_tool`), VL-SAM's attention flow;
- :mod:`.names`: object names parsed from answers, and mapped to a dataset's categories;
- :mod:`.sam`: SAM backends, point prompts from attention maps, the SAM nodes;
- :mod:`.grounding`: open-vocabulary detectors (Grounding DINO, OWLv2, SAM 3), their node, crops,
  and the detect-fused branch;
- :mod:`.ocr`: text lines; :mod:`.merge`: NMS/NMM over views; :mod:`.tiles`: views of an image.

Shared by all: :mod:`.backends` (the registries), :mod:`.hub` (loading), :mod:`.detections`,
:mod:`.views` and :mod:`.ports` (what flows between nodes), :mod:`.thin` (images too thin).
"""
