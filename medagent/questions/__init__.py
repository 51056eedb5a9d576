"""Question datasets (medical VQA and agent benchmarks): the question model, loaders for the public layouts,
answer extraction and image corruptions for robustness arms."""
