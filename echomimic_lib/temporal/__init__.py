"""Signals over video time shared by the driving conditions (face landmarks for V1, hand poses for V2).

:mod:`.keypoints`: the One-Euro keypoint filter run forwards and backwards (no lag) and the filling of short
dropouts. It knows nothing of faces or hands; ``landmarks/`` and ``pose/`` pick its settings.
"""
