"""SSA-engine's models: BLIP captioner, spaCy noun phrases, CLIP candidate filter, CLIPSeg
decider, and :class:`~fiftyone_ssa.models.engine.models.EngineModels` that loads them."""
