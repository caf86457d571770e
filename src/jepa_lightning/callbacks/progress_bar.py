"""The command line's progress bar: Lightning's rich bar, without an epoch total it cannot know."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """:class:`~lightning.pytorch.callbacks.RichProgressBar` for runs bounded by steps.

    Lightning's bar shows ``Epoch {current}/{max_epochs - 1}``; a run with ``max_epochs``
    unset and ``max_steps`` given has ``max_epochs == -1`` and would show ``Epoch 5/-2``.
    Without an epoch bound this bar shows ``Epoch 5``; with one, it is Lightning's.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        """The training bar's label.

        Args:
            current_epoch: The epoch being trained.

        Returns:
            ``Epoch {current}`` (with ``/{last}`` when the run has an epoch bound), padded to
            the validation label's width so the bars do not flicker.
        """
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"
