"""An example reward plugin: how red the image is."""

from tdmr1_lightning.reward import Reward, RewardOutput


class Redness(Reward):
    """Mean of red minus the other channels, in [-1, 1] (an example third-party reward).

    Args:
        margin: Pixels count as red only when red exceeds both other channels by this much (0-255).
    """

    def __init__(self, margin: int = 0) -> None:
        self.margin = margin

    def score(self, images, prompts, metadata):
        x = images.float()
        red, other = x[:, 0], x[:, 1:].amax(dim=1)
        redness = ((red - other - self.margin).clamp(min=-255, max=255) / 255).mean(dim=(1, 2))
        return RewardOutput(
            scores=redness, details={"red_pixels": (red > other + self.margin).float().mean(dim=(1, 2)).tolist()}
        )
