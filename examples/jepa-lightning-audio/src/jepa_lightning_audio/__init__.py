"""An audio modality for jepa-lightning, registered under the entry point ``audio``.

* :class:`AudioEncoder`: waveform → log-mel spectrogram → a small transformer; variable length.
* :class:`AudioCodec`: ``wav``/``flac`` decoding (``soundfile``) and padded batches
  (:class:`Waveforms`).
* :mod:`jepa_lightning_audio.tones` and :class:`TonesDataModule`: a generated audio-caption
  set ("a high beep, then a low hum") written as WebDataset shards.
"""

from jepa_lightning_audio.codec import AudioCodec, Waveforms
from jepa_lightning_audio.datamodule import TonesDataModule
from jepa_lightning_audio.encoder import AudioEncoder
from jepa_lightning_audio.tones import TonesSpec, ensure_tones_shards, write_tones_shards

__all__ = [
    "AudioCodec",
    "AudioEncoder",
    "TonesDataModule",
    "TonesSpec",
    "Waveforms",
    "ensure_tones_shards",
    "write_tones_shards",
]
