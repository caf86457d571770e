import torch

from jepa_lightning.modules import VLJEPA


def test_compiled_predictor_keeps_checkpoint_names(tiny_model_kwargs) -> None:
    # Both models share the fixture's encoders; the predictor is what differs.
    compiled = VLJEPA(**tiny_model_kwargs, compile_predictor=True)
    plain = VLJEPA(**tiny_model_kwargs)
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    # A checkpoint of either loads into the other.
    plain.load_state_dict(compiled.state_dict())
    compiled.load_state_dict(plain.state_dict())
    visual = torch.randn(2, compiled.model.predictor.num_visual_tokens, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled.model.predictor(visual), plain.model.predictor(visual))
