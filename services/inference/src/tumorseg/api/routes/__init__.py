"""Route modules; each is a few lines that call one service function and return a schema."""
