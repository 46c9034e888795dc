from dataclasses import dataclass, field

import torch

from common.data.custom import dataset_data
from common.models.cnn import CNNConfig, small_cnn
from common.tasks.classifier import Classifier, ClassifierConfig


class Squares(torch.utils.data.Dataset):  # yours: read files, a database, anything
    classes = ["dark", "bright"]

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.rand(n, 1, 16, 16, generator=g) + self.y.view(-1, 1, 1, 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i] + 0.5 * torch.randn(1, 16, 16)  # a random transform: seeded per sample
        return x, int(self.y[i])


@dataclass
class Config(ClassifierConfig):
    model: CNNConfig = field(default_factory=CNNConfig)


def make_dataset(cfg, split):
    return Squares(512 if split == "train" else 128, seed=0 if split == "train" else 1)


task = Classifier(Config, small_cnn, __file__, build_data=dataset_data(make_dataset))

if __name__ == "__main__":
    task.main()
