"""Files in and out: weights (read, convert, fetch), the allow-list unpickler, video and audio reading,
the streaming MP4 writer."""
