"""Network definition, model packages and the predictor."""
