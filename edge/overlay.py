"""Heat-map overlay of an anomaly map on its frame (alarm snapshots and the status /latest.jpg).

The map is scaled against the decision threshold so colours mean the same thing on every
frame: 0 → blue, the threshold → middle of the colour map, 2 × threshold and above → red.
Pixels whose map value exceeds the threshold are outlined.
"""
from __future__ import annotations

import cv2
import numpy as np

from .preprocess import map_to_frame


def overlay_heatmap(frame_bgr: np.ndarray, anomaly_map: np.ndarray, threshold: float | None = None,
                    score: float | None = None, alpha: float = 0.45, fit: str = "stretch") -> np.ndarray:
    """Blend a JET heat map of ``anomaly_map`` (S×S, any leading 1-dims) onto ``frame_bgr`` (H×W×3 uint8).

    The map is put back onto the frame through the inverse of the model's fit policy (edge.preprocess.map_to_frame:
    stretched back, or only the letterboxed content, or into the centre crop). Returns a new H×W×3 uint8 image.
    """
    amap: np.ndarray = np.asarray(anomaly_map, dtype=np.float32).squeeze()
    if amap.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D after squeezing, got shape {np.shape(anomaly_map)}")
    h, w = frame_bgr.shape[:2]
    amap = map_to_frame(amap, (h, w), fit)
    finite_max = float(np.nanmax(amap)) if np.isfinite(amap).any() else 1.0
    vmax = 2.0 * threshold if threshold and threshold > 0 else max(finite_max, 1e-12)
    norm = np.clip(np.nan_to_num(amap / vmax), 0.0, 1.0)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(frame_bgr, 1.0 - alpha, heat, alpha, 0.0)
    if threshold is not None:
        mask = (amap > threshold).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, min(h, w) // 200))
    if score is not None:
        label = f"score {score:.4g}" + (f" / thr {threshold:.4g}" if threshold is not None else "")
        alarm = threshold is not None and score > threshold
        scale = max(0.4, min(h, w) / 600)
        cv2.putText(out, label, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 255) if alarm else (255, 255, 255), max(1, int(2 * scale)), cv2.LINE_AA)
    return out


def encode_jpeg(image_bgr: np.ndarray, quality: int = 80) -> bytes:
    """JPEG bytes of a BGR image (for /latest.jpg and snapshot sinks)."""
    ok, buf = cv2.imencode(".jpg", image_bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError(f"cannot JPEG-encode an image of shape {image_bgr.shape}")
    return buf.tobytes()
