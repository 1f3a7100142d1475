def test_resized_size_is_what_random_shortest_size_produces() -> None:
    import torch
    from torchvision.transforms import v2

    from scratchdet.data.transforms import resized_size

    for height, width in ((128, 128), (96, 128), (128, 96), (333, 500), (800, 1333), (37, 1000)):
        for min_size, max_size in ((96, 128), (800, 1333), (640, 1000)):
            image = torch.zeros(3, height, width)
            out = v2.RandomShortestSize(min_size=[min_size], max_size=max_size)(image)
            assert tuple(out.shape[-2:]) == resized_size(height, width, min_size, max_size)
