"""Drawing on video frames: the class-map overlay, the legend and the FPS line.

Rendering runs once per frame at the output's full resolution, so it avoids per-pixel numpy work: the palette
lookup is ``cv2.applyColorMap`` with a 256-entry table built once, and blending is one ``cv2.addWeighted`` written
into the frame itself. Both release the GIL, which lets rendering overlap with inference in another thread.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..preprocess import draw_legend


LOW_CONFIDENCE = 128
"""Pixels whose maximum softmax probability is below this (of 255, i.e. p < 0.5) get the low-confidence tint."""
TINT_BGR = (255, 0, 255)


class OverlayRenderer:
    """Blends class colours over BGR frames and writes the smoothed FPS and model name in a corner.

    Args:
        palette: RGB colour per class id, as in the model's metadata.
        class_names: Names for the legend, by class id.
        alpha: Weight of the class colours (0 shows the frame untouched, 1 only the colours).
        legend: Draw swatches and names of the classes present in each frame.
        label: Text shown after the FPS, typically the model name.
    """

    def __init__(self, palette, class_names: list[str], *, alpha: float = 0.5, legend: bool = False,
                 label: str = ""):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        colours_rgb = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        self.bgr_palette = colours_rgb[:, ::-1].tolist()
        self._lut = np.zeros((256, 1, 3), dtype=np.uint8)  # ids without a colour (void, unknown) stay black
        self._lut[: len(colours_rgb), 0] = colours_rgb[:, ::-1]
        self.class_names = list(class_names)
        self.alpha = alpha
        self.legend = legend
        self.label = label

    def render(self, frame: np.ndarray, class_map: np.ndarray, fps: float | None = None,
               confidence: np.ndarray | None = None) -> np.ndarray:
        """Draw onto ``frame`` (in place, and returned); ``class_map`` must have the frame's height and width.

        With ``confidence`` (uint8 0-255, same size), pixels below :data:`LOW_CONFIDENCE` are tinted magenta, so
        the viewer sees where the model is unsure rather than a confident-looking colour.
        """
        if self.alpha > 0:
            colours = cv2.applyColorMap(np.ascontiguousarray(class_map, dtype=np.uint8), self._lut)
            cv2.addWeighted(frame, 1.0 - self.alpha, colours, self.alpha, 0.0, dst=frame)
        if confidence is not None:
            low = confidence < LOW_CONFIDENCE
            frame[low] = (0.4 * frame[low] + 0.6 * np.array(TINT_BGR)).astype(np.uint8)
        if self.legend:
            present = np.flatnonzero(np.bincount(class_map.ravel(), minlength=len(self.class_names)))
            draw_legend(frame, present, self.bgr_palette, self.class_names)
        if fps is not None:
            self._draw_caption(frame, f"{fps:5.1f} FPS  {self.label}".rstrip())
        return frame

    @staticmethod
    def _draw_caption(frame: np.ndarray, text: str) -> None:
        """White text with a dark outline in the bottom-left corner, readable on any background."""
        scale = max(0.4, frame.shape[0] / 900)
        thickness = max(1, round(2 * scale))
        origin = (8, frame.shape[0] - 10)
        cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(frame, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
