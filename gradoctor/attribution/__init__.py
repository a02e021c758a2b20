"""``gradoctor explain``: saliency, SmoothGrad and Integrated Gradients on Captum, with their
guarantees checked — completeness to a tolerance, memory-sized chunks, sanity checks,
faithfulness (``api.explain`` for any model, ``recipe_explain.explain_recipe`` for a recipe)."""
