"""The standalone VL-JEPA model: embed images and texts, and answer questions, without Lightning.

:class:`PretrainedVLJEPA` wraps the model core that training uses
(:class:`~jepa_lightning.models.VLJEPAModel`) and reads and writes the export format of
:mod:`jepa_lightning.export` (``model.safetensors``, ``config.json``, ``tokenizer/``) through
``huggingface_hub``'s ``ModelHubMixin``: ``from_pretrained`` takes an export folder or a hub
repository holding one, ``save_pretrained`` writes one (and ``push_to_hub`` uploads it).

Images go through the X-encoder's own transform: the image codec's resize of the shorter side
and centre crop (as in training), then the encoder's normalisation.

Example::

    model = PretrainedVLJEPA.from_pretrained("exported/vl-jepa")
    images = model.encode_images(["cat.png", "dog.png"])      # ŝ, unit norm
    texts = model.encode_texts(["a cat", "a dog"])             # s, unit norm
    scores = images @ texts.T
    captions = model.caption(["cat.png"])                     # with a Y-decoder in the export

An export may hold a Y-decoder (``decoder/``, :class:`~jepa_lightning.models.YDecoder`), which
turns embeddings into text (:meth:`PretrainedVLJEPA.decode`); exports without one load as
before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from huggingface_hub import ModelHubMixin, snapshot_download
from PIL import Image
from torch import Tensor, nn

from jepa_lightning.encoders.vision import ImageCodec
from jepa_lightning.export import export_model, load_exported
from jepa_lightning.models.vl_jepa import VLJEPAModel
from jepa_lightning.models.y_decoder import YDecoder
from jepa_lightning.objectives import CaptionInfoNCE

ImageInput = Image.Image | str | os.PathLike | Tensor
"""One image: a PIL image, a file path, or a ``(3, H, W)`` tensor (``uint8``, or float in
``[0, 1]``)."""

Candidates = Sequence[str] | Sequence[Sequence[str]]
"""Candidate answers: one list for every question, or one list per question."""

DECODER_DIR = "decoder"
"""The export's optional Y-decoder folder (:meth:`YDecoder.save_pretrained`)."""


def _candidate_lists(questions: Sequence[str], candidates: Candidates) -> list[Sequence[str]]:
    """One list of candidate answers per question.

    Raises:
        ValueError: If the counts differ or a question has no candidate.
    """
    if len(candidates) > 0 and isinstance(candidates[0], str):
        lists = [candidates] * len(questions)
    else:
        lists = list(candidates)
    if len(lists) != len(questions):
        raise ValueError(f"{len(lists)} candidate lists for {len(questions)} questions")
    if any(len(options) == 0 for options in lists):
        raise ValueError("every question needs at least one candidate answer")
    return lists  # type: ignore[return-value]


class PretrainedVLJEPA(nn.Module, ModelHubMixin, library_name="jepa-lightning"):
    """A trained VL-JEPA model for inference: batched, without gradients, on any device.

    Embeddings come back as ``float32`` on the CPU, L2-normalised: an image is ``ŝ`` (the
    predictor's embedding of its X tokens and an optional query), a text is ``s`` (the
    Y-encoder's). Cosine similarity is their dot product.

    Args:
        model: The model core (e.g. :func:`~jepa_lightning.export.load_exported`'s).
        temperature: The temperature learned with the caption objective, if known
            (``from_pretrained`` reads it from ``config.json``).
        batch_size: Inputs per forward pass.
        decoder: A Y-decoder that writes text from embeddings (:meth:`decode`), or None.

    Raises:
        ValueError: If ``batch_size`` is below 1, or the decoder reads embeddings of another
            width.
    """

    def __init__(
        self,
        model: VLJEPAModel,
        temperature: float | None = None,
        batch_size: int = 64,
        decoder: YDecoder | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if decoder is not None and decoder.embed_dim != model.embed_dim:
            raise ValueError(
                f"the decoder reads {decoder.embed_dim}-d embeddings, the model makes "
                f"{model.embed_dim}-d ones"
            )
        self.model = model.eval()
        self.temperature = temperature
        self.batch_size = batch_size
        self.decoder = None if decoder is None else decoder.eval()

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        temperature: float | None = None,
        batch_size: int = 64,
        **hub_kwargs: Any,
    ) -> PretrainedVLJEPA:
        """Loads an export folder, or downloads one from the hub (``from_pretrained``).

        Args:
            model_id: An export folder, or a hub repository id holding one.
            revision: Hub revision.
            cache_dir: Hub cache folder.
            force_download: Download even when cached.
            local_files_only: Use only the hub cache.
            token: Hub token.
            device: Where to run (default: the CPU).
            dtype: Floating-point type of the weights (default: float32).
            temperature: The temperature (read from ``config.json`` by ``from_pretrained``).
            batch_size: Inputs per forward pass.
            **hub_kwargs: Further arguments that older ``huggingface_hub`` releases pass.

        Returns:
            The model, in eval mode.
        """
        folder = model_id
        if not os.path.isdir(model_id):
            folder = snapshot_download(
                repo_id=model_id,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
            )
        decoder_folder = Path(folder) / DECODER_DIR
        decoder = YDecoder.from_pretrained(decoder_folder) if decoder_folder.is_dir() else None
        model = cls(load_exported(folder), temperature, batch_size, decoder)
        return model.to(device=device, dtype=dtype)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 64,
    ) -> PretrainedVLJEPA:
        """Loads the model core of a ``jepa-lightning fit`` checkpoint (this imports Lightning).

        Args:
            checkpoint: Path of the ``.ckpt`` file.
            device: Where to run (default: the CPU).
            dtype: Floating-point type of the weights (default: float32).
            batch_size: Inputs per forward pass.

        Returns:
            The model, in eval mode.
        """
        from jepa_lightning.modules.vl_jepa import VLJEPA  # Lightning: only to read checkpoints

        module = VLJEPA.load_from_checkpoint(checkpoint, map_location="cpu")
        caption = module.objectives["caption"] if "caption" in module.objectives else None
        temperature = None if caption is None else cast(CaptionInfoNCE, caption).temperature
        model = cls(module.model, temperature=temperature, batch_size=batch_size)
        return model.to(device=device, dtype=dtype)

    def _save_pretrained(self, save_directory: Path) -> None:
        """Writes the export folder (``save_pretrained``; see :mod:`jepa_lightning.export`).

        Args:
            save_directory: The folder.
        """
        export_model(self.model, str(save_directory), temperature=self.temperature)
        if self.decoder is not None:
            self.decoder.save_pretrained(Path(save_directory) / DECODER_DIR)

    @property
    def device(self) -> torch.device:
        """The device of the weights."""
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        """Side of the square images that the X-encoder reads."""
        return self._codec().image_size

    def _codec(self) -> ImageCodec:
        codec = self.model.x_encoder.codec()
        if not isinstance(codec, ImageCodec):
            raise TypeError(f"the X-encoder reads {type(codec).__name__} inputs, not images")
        return codec

    def _pixel_batch(self, images: Sequence[ImageInput]) -> Tensor:
        """The X-encoder's input for images: resized and centre-cropped, stacked."""
        codec = self._codec()
        side = codec.image_size
        pixels = []
        for image in images:
            if isinstance(image, Tensor):
                if image.dim() != 3 or image.shape[0] != 3:
                    raise ValueError(f"an image tensor must be (3, H, W), got {tuple(image.shape)}")
                if tuple(image.shape[1:]) != (side, side):
                    if image.is_floating_point():
                        image = (image * 255).round().clamp(0, 255).to(torch.uint8)
                    image = codec.transform(Image.fromarray(image.permute(1, 2, 0).numpy()))
                pixels.append(image)
            elif isinstance(image, Image.Image):
                pixels.append(codec.transform(image))
            elif isinstance(image, (str, os.PathLike)):
                with Image.open(image) as opened:
                    pixels.append(codec.transform(opened))
            else:
                raise TypeError(f"cannot read an image from {type(image).__name__}")
        if len({pixel.dtype for pixel in pixels}) > 1:  # uint8 next to float [0, 1]
            pixels = [p.float() / 255 if p.dtype == torch.uint8 else p for p in pixels]
        return torch.stack(pixels)

    @torch.no_grad()
    def encode_images(
        self,
        images: Sequence[ImageInput] | Tensor,
        queries: Sequence[str | None] | None = None,
        batch_size: int | None = None,
    ) -> Tensor:
        """``ŝ`` of images, optionally each with a text query (a question, an instruction).

        Args:
            images: PIL images, file paths or ``(3, H, W)`` tensors (any size: resized and
                centre-cropped as in training), or a ``(B, 3, H, W)`` tensor.
            queries: One query per image (None or ``""``: none), or None: no query (the
                retrieval embedding).
            batch_size: Images per forward pass; default the model's.

        Returns:
            ``(N, D)`` unit-norm float32 embeddings, on the CPU.

        Raises:
            ValueError: If ``queries`` does not have one entry per image, or an image tensor
                is not ``(3, H, W)``.
            TypeError: If an image is of another type.
        """
        items = list(images.unbind(0)) if isinstance(images, Tensor) else list(images)
        if queries is not None and len(queries) != len(items):
            raise ValueError(f"{len(queries)} queries for {len(items)} images")
        size = batch_size or self.batch_size
        parts = [torch.empty(0, self.model.embed_dim)]
        for start in range(0, len(items), size):
            pixels = self._pixel_batch(items[start : start + size]).to(self.device)
            rows = None if queries is None else queries[start : start + size]
            parts.append(self.model.embed_inputs(pixels, rows).float().cpu())
        return torch.cat(parts)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int | None = None) -> Tensor:
        """``s`` of texts (truncated to the Y-encoder's ``max_length`` tokens).

        Args:
            texts: The texts.
            batch_size: Texts per forward pass; default the model's.

        Returns:
            ``(N, D)`` unit-norm float32 embeddings, on the CPU.
        """
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of texts, not one string")
        items = list(texts)
        size = batch_size or self.batch_size
        parts = [torch.empty(0, self.model.embed_dim)]
        for start in range(0, len(items), size):
            parts.append(self.model.embed_texts(items[start : start + size]).float().cpu())
        return torch.cat(parts)

    def score_answers(
        self,
        images: Sequence[ImageInput] | Tensor,
        questions: Sequence[str],
        candidates: Candidates,
        batch_size: int | None = None,
    ) -> list[Tensor]:
        """Cosine similarity of each question's ``ŝ`` (image + question) to its candidates' ``s``.

        This is VL-JEPA's discriminative VQA: the predictor reads the image and the question,
        the Y-encoder embeds every candidate answer, and the nearest candidate is the answer.

        Args:
            images: One image per question (as for :meth:`encode_images`).
            questions: The questions.
            candidates: The candidate answers: one list for all questions, or one per question.
            batch_size: Inputs per forward pass; default the model's.

        Returns:
            Per question, a ``(C,)`` float32 tensor of scores, in the order of its candidates.

        Raises:
            ValueError: If the counts of images, questions and candidate lists differ, or a
                question has no candidate.
        """
        lists = _candidate_lists(questions, candidates)
        predicted = self.encode_images(images, queries=list(questions), batch_size=batch_size)
        distinct = list(dict.fromkeys(text for options in lists for text in options))
        embedded = dict(zip(distinct, self.encode_texts(distinct, batch_size), strict=True))
        return [
            torch.stack([embedded[text] for text in options]) @ row
            for row, options in zip(predicted, lists, strict=True)
        ]

    def answer(
        self,
        images: Sequence[ImageInput] | Tensor,
        questions: Sequence[str],
        candidates: Candidates,
        batch_size: int | None = None,
    ) -> list[str]:
        """The nearest candidate answer to each (image, question), as :meth:`score_answers`.

        Args:
            images: One image per question.
            questions: The questions.
            candidates: One list of candidate answers for all questions, or one per question.
            batch_size: Inputs per forward pass; default the model's.

        Returns:
            The chosen answer of each question.
        """
        scores = self.score_answers(images, questions, candidates, batch_size)
        lists = _candidate_lists(questions, candidates)
        return [str(options[int(row.argmax())]) for row, options in zip(scores, lists, strict=True)]

    @torch.no_grad()
    def decode(
        self,
        embeddings: Tensor,
        num_beams: int = 1,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
    ) -> list[str]:
        """The text of embeddings (``ŝ`` or ``s``), written by the export's Y-decoder.

        Args:
            embeddings: ``(N, D)`` embeddings (any norm: the decoder normalises them).
            num_beams: Beams (1: greedy decoding).
            max_new_tokens: Longest text in tokens; default the decoder's ``max_length``.
            batch_size: Embeddings per ``generate`` call; default the model's.

        Returns:
            One text per embedding.

        Raises:
            ValueError: If the model has no decoder.
        """
        decoder = self._decoder()
        size = batch_size or self.batch_size
        texts: list[str] = []
        for start in range(0, len(embeddings), size):
            rows = embeddings[start : start + size].to(self.device)
            texts += decoder.generate(rows, num_beams, max_new_tokens)
        return texts

    def _decoder(self) -> YDecoder:
        """The Y-decoder, or a ValueError saying how to get one."""
        if self.decoder is None:
            raise ValueError(
                "this model has no Y-decoder: train one (jepa-lightning fit --config "
                "configs/y_decoder_shapes_tiny.yaml) and export it (jepa-lightning export-decoder)"
            )
        return self.decoder

    def caption(
        self,
        images: Sequence[ImageInput] | Tensor,
        num_beams: int = 1,
        batch_size: int | None = None,
    ) -> list[str]:
        """Captions of images: their ``ŝ`` (no query), decoded by the Y-decoder.

        Args:
            images: As for :meth:`encode_images`.
            num_beams: Beams (1: greedy decoding).
            batch_size: Inputs per forward pass; default the model's.

        Returns:
            One caption per image.

        Raises:
            ValueError: If the model has no decoder.
        """
        self._decoder()  # before the images are read
        return self.decode(self.encode_images(images, batch_size=batch_size), num_beams)


def load_model(
    source: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    batch_size: int = 64,
) -> PretrainedVLJEPA:
    """A model from a ``.ckpt`` checkpoint, an export folder or a hub repository id.

    Args:
        source: The checkpoint file, the export folder, or the repository id.
        device: Where to run (default: the CPU).
        dtype: Floating-point type of the weights (default: float32).
        batch_size: Inputs per forward pass.

    Returns:
        The model, in eval mode.

    Raises:
        FileNotFoundError: If ``source`` looks like a local path (or a ``.ckpt``) that does
            not exist.
    """
    if os.path.isfile(source):
        return PretrainedVLJEPA.from_checkpoint(source, device, dtype, batch_size)
    if not os.path.isdir(source) and (source.endswith(".ckpt") or source.startswith((".", "/"))):
        raise FileNotFoundError(f"no checkpoint or export folder at {source!r}")
    return PretrainedVLJEPA.from_pretrained(
        source, device=device, dtype=dtype, batch_size=batch_size
    )
