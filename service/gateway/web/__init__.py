"""The web page: upload a video or pick a sample, run a model, watch its masks over the video."""
