"""Frame geometry around the generated picture: the crop (where the picture came from), face tracking
through a video with one crop per clip, reference preparation, colour matching and the paste-back."""
