"""pls_perception.io.bags: real rosbag2 files written and read back, broken bags, reports."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from pls_perception import paths
from pls_perception.errors import BagError
from pls_perception.io import bag_report, bags, replay

RNG = np.random.default_rng(7)
IMAGES = RNG.integers(0, 256, (12, 6, 5, 3), dtype=np.uint8)
LABELS = [i % 3 for i in range(12)]
CLASSES = ('a', 'b', 'c')


def _storage_file(bag: Path) -> Path:
    return next(p for p in bag.iterdir() if p.suffix in ('.db3', '.mcap'))


@pytest.fixture(params=bags.STORAGE_IDS)
def image_bag(request, tmp_path: Path) -> Path:
    return bags.write_image_bag(tmp_path / f'bag_{request.param}', IMAGES, LABELS,
                                class_names=CLASSES, storage=request.param, rate_hz=20.0,
                                start_ns=1_000_000_000_000).path


@pytest.mark.parametrize('storage', bags.STORAGE_IDS)
@pytest.mark.parametrize('encoding', bags.WRITE_ENCODINGS)
def test_roundtrip_every_encoding(tmp_path: Path, storage: str, encoding: str) -> None:
    summary = bags.write_image_bag(tmp_path / 'b', IMAGES, LABELS, class_names=CLASSES,
                                   storage=storage, encoding=encoding, rate_hz=25.0,
                                   frame_id='cam0', start_ns=5 * bags.NS_PER_S)
    frames = list(bags.read_image_frames(summary.path))
    assert [f.stamp_ns for f in frames] == [5 * bags.NS_PER_S + i * 40_000_000
                                            for i in range(12)]
    assert [f.log_time_ns for f in frames] == [f.stamp_ns for f in frames]
    assert {f.encoding for f in frames} == {encoding}
    assert {f.frame_id for f in frames} == {'cam0'}
    for frame, image in zip(frames, IMAGES):
        rgb = frame.rgb()
        if encoding == 'mono8':
            assert np.all(rgb[..., 0] == rgb[..., 1])
            luma = image.astype(np.float64) @ [0.299, 0.587, 0.114]
            assert np.abs(rgb[..., 0] - luma).max() <= 0.51
        else:
            assert np.array_equal(rgb, image)


def test_metadata_is_rosbag2_jazzy(image_bag: Path) -> None:
    meta = yaml.safe_load((image_bag / 'metadata.yaml').read_text())
    info = meta['rosbag2_bagfile_information']
    assert info['version'] == bags.BAG_VERSION
    assert info['message_count'] == 12
    assert info['storage_identifier'] in bags.STORAGE_IDS
    assert info['relative_file_paths'] == [_storage_file(image_bag).name]
    topic = info['topics_with_message_count'][0]['topic_metadata']
    assert (topic['name'], topic['type']) == ('/image', bags.IMAGE_MSGTYPE)
    assert bags.bag_topics(image_bag) == {'/image': (bags.IMAGE_MSGTYPE, 12)}


def test_labels_beside_bag(image_bag: Path) -> None:
    truth = bags.read_labels(image_bag)
    frames = list(bags.read_image_frames(image_bag))
    assert truth.stamps_ns == tuple(f.stamp_ns for f in frames)
    assert truth.labels == tuple(LABELS)
    assert truth.class_names == CLASSES
    assert truth.names[0] == 'frame_000000'


def test_write_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='rate_hz'):
        bags.write_image_bag(tmp_path / 'a', IMAGES, rate_hz=0.0)
    with pytest.raises(ValueError, match='encoding'):
        bags.write_image_bag(tmp_path / 'a', IMAGES, encoding='yuv422')
    with pytest.raises(ValueError, match='storage'):
        bags.write_image_bag(tmp_path / 'a', IMAGES, storage='rosbag1')
    with pytest.raises(ValueError, match='labels'):
        bags.write_image_bag(tmp_path / 'a', IMAGES, LABELS[:3])
    bags.write_image_bag(tmp_path / 'a', IMAGES)
    with pytest.raises(FileExistsError):
        bags.write_image_bag(tmp_path / 'a', IMAGES)


def test_missing_topic_and_wrong_type(tmp_path: Path) -> None:
    with bags.RecordWriter(tmp_path / 'strings') as writer:
        writer.write('/image', bags.STRING_MSGTYPE, 1, bags.string_cdr('not an image'))
        writer.write('/other', bags.STRING_MSGTYPE, 2, bags.string_cdr('x'))
    with pytest.raises(BagError, match=r"'/camera' not in bag .*/image \[std_msgs/msg/String\]"):
        list(bags.read_image_frames(tmp_path / 'strings', '/camera'))
    with pytest.raises(BagError, match=r'has type std_msgs/msg/String, expected sensor_msgs'):
        list(bags.read_image_frames(tmp_path / 'strings', '/image'))
    with pytest.raises(BagError, match=r'has 0 sensor_msgs/msg/Image topics'):
        bags.image_topic(tmp_path / 'strings')


def test_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(BagError, match='does not exist'):
        bags.bag_topics(tmp_path / 'nope')
    with pytest.raises(BagError, match='no metadata.yaml'):
        bags.bag_topics(tmp_path)
    (tmp_path / 'metadata.yaml').write_text('rosbag2_bagfile_information: {version: 9}\n')
    with pytest.raises(BagError, match='cannot open bag'):
        bags.bag_topics(tmp_path)


@pytest.mark.parametrize('damage', ['truncate_third', 'zero_middle', 'delete_file'])
def test_corrupt_or_truncated_bag(image_bag: Path, damage: str) -> None:
    storage = _storage_file(image_bag)
    data = storage.read_bytes()
    if damage == 'truncate_third':
        storage.write_bytes(data[:len(data) // 3])
    elif damage == 'zero_middle':
        storage.write_bytes(data[:100] + bytes(len(data) - 200) + data[-100:])
    else:
        storage.unlink()
    with pytest.raises(BagError, match=r'corrupt|truncated|cannot open'):
        list(bags.read_image_frames(image_bag))


def test_message_count_mismatch_is_truncation(image_bag: Path, tmp_path: Path) -> None:
    """A storage file from a shorter recording under the original metadata: caught by count."""
    storage = 'mcap' if _storage_file(image_bag).suffix == '.mcap' else 'sqlite3'
    short = bags.write_image_bag(tmp_path / 'short', IMAGES[:4], storage=storage,
                                 rate_hz=20.0, start_ns=1_000_000_000_000).path
    shutil.copy(_storage_file(short), _storage_file(image_bag))
    with pytest.raises(BagError, match=r'lists 12 messages .* holds 4'):
        list(bags.read_image_frames(image_bag))


def test_frame_source_bag_keeps_fields_or_recodes(image_bag: Path) -> None:
    kept = list(replay.FrameSource(image_bag).frames())
    assert [f.stamp_ns for f in kept] == list(bags.read_labels(image_bag).stamps_ns)
    recoded = list(replay.FrameSource(image_bag, encoding='bgr8', frame_id='x', limit=5).frames())
    assert len(recoded) == 5
    assert {(f.encoding, f.frame_id) for f in recoded} == {('bgr8', 'x')}
    assert all(np.array_equal(a.rgb(), b.rgb()) for a, b in zip(kept, recoded))


def test_frame_source_folder(tmp_path: Path) -> None:
    from PIL import Image

    for i, image in enumerate(IMAGES[:4]):
        (tmp_path / 'imgs' / CLASSES[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / 'imgs' / CLASSES[i % 2] / f'{i}.png')
    source = replay.FrameSource(tmp_path / 'imgs')
    frames = list(source.frames())
    assert (source.is_bag, source.count) == (False, 4)
    assert [f.index for f in frames] == [0, 1, 2, 3]
    # ImageFolder order: class a (images 0, 2), then class b (1, 3)
    for frame, image in zip(frames, IMAGES[[0, 2, 1, 3]]):
        assert np.array_equal(frame.rgb(), image)
    images, labels, names, class_names = bags.load_source_images(tmp_path / 'imgs')
    assert list(labels) == [0, 0, 1, 1] and class_names == ('a', 'b')


def test_publish_offsets() -> None:
    assert replay.publish_offset_ns(3, 999, 0, rate_hz=10.0) == 300_000_000
    assert replay.publish_offset_ns(3, 5_000, 1_000, rate_hz=0.0) == 4_000
    assert replay.publish_offset_ns(3, 5_000, 1_000, rate_hz=0.0, rate_multiplier=2.0) == 2_000
    with pytest.raises(ValueError, match='rate_multiplier'):
        replay.publish_offset_ns(0, 0, 0, 0.0, rate_multiplier=0.0)
    with pytest.raises(ValueError, match='rate_hz'):
        replay.publish_offset_ns(0, 0, 0, -1.0)


def _recording(tmp_path: Path, truth: bags.GroundTruth, predictions: dict[int, int],
               latencies: dict[int, float]) -> Path:
    out = tmp_path / 'rec'
    with bags.RecordWriter(out, 'mcap') as writer:
        writer.write('/dvfs_manager/operating_point', bags.STRING_MSGTYPE, 0, bags.string_cdr(
            json.dumps({'budget_ms': 50.0, 'keep_ratio': 1.0, 'energy_mj': 2.0})))
        for k, stamp in enumerate(truth.stamps_ns):
            if stamp not in predictions:
                continue
            sec, nanosec = divmod(stamp, bags.NS_PER_S)
            payload = {'stamp': {'sec': sec, 'nanosec': nanosec}, 'class_id': predictions[stamp],
                       'keep_ratio': 1.0, 'latency_ms': latencies[stamp]}
            writer.write('/pls_perception_node/frame_info', bags.STRING_MSGTYPE,
                         10 + k, bags.string_cdr(json.dumps(payload)))
            if k == 5:
                writer.write('/dvfs_manager/operating_point', bags.STRING_MSGTYPE, 10 + k,
                             bags.string_cdr(json.dumps({'budget_ms': 10.0, 'energy_mj': 1.0})))
    return out


def test_report(tmp_path: Path) -> None:
    truth = bags.GroundTruth(tuple(range(100, 110)), (0, 1, 2, 0, 1, 2, 0, 1, 2, -1),
                             tuple('abcdefghij'), CLASSES)
    dropped = {102, 107}
    predictions = {s: (label if s != 103 else 2) for s, label in
                   zip(truth.stamps_ns, truth.labels) if s not in dropped}
    latencies = {s: float(s - 100) * 5.0 for s in truth.stamps_ns}
    recording = bag_report.read_recording(_recording(tmp_path, truth, predictions, latencies))
    assert len(recording.classifications) == 8 and len(recording.operating_points) == 2
    report = bag_report.compute_report(recording, truth)
    assert report['frames_sent'] == 10
    assert report['frames_classified'] == 8
    assert report['dropped_stamps_ns'] == sorted(dropped)
    # 7 labelled frames classified, one wrong; the unlabelled one does not count
    assert report['accuracy_classified'] == pytest.approx(6 / 7)
    assert report['accuracy_all'] == pytest.approx(6 / 9)
    assert report['latency_ms']['max'] == 45.0
    # budget 50 ms (2 mJ) before frame k=5, then 10 ms (1 mJ): frames k=5,6,8,9 (25, 30, 40,
    # 45 ms) miss it; k=7 was dropped
    assert report['deadline_misses'] == 4
    assert report['energy_per_frame_mj'] == pytest.approx((4 * 2.0 + 4 * 1.0) / 8)
    fixed = bag_report.compute_report(recording, truth, deadline_ms=30.0)
    assert fixed['deadline_misses'] == 2
    assert bag_report.plot_report(report, tmp_path / 'r.png').stat().st_size > 1000
    assert dict(bag_report.report_table(report))['frames dropped'] == '2'
    assert (report['results_typed'], report['results_frame_info']) == (0, 8)
    assert report['label_info_matches_ground_truth'] is None


@pytest.mark.parametrize('storage', bags.STORAGE_IDS)
def test_report_reads_typed_results_and_joins_frame_info(tmp_path: Path, storage: str) -> None:
    """What pls-bag record writes with vision_msgs: Classification + LabelInfo + frame_info."""
    truth = bags.GroundTruth((100, 101, 102, 103), (0, 1, 2, 1), tuple('abcd'), CLASSES)
    with bags.RecordWriter(tmp_path / 'rec', storage) as writer:
        writer.write('/p/label_info', bags.LABEL_INFO_MSGTYPE, 1, bags.label_info_cdr(CLASSES))
        # 100 and 101: typed + frame_info; 102: frame_info only; 103: typed only
        for k, (stamp, top) in enumerate([(100, [(0, 0.75), (2, 0.25)]), (101, [(2, 0.5)]),
                                          (103, [(1, 0.875)])]):
            writer.write('/p/classification', bags.CLASSIFICATION_MSGTYPE, 10 + 2 * k,
                         bags.classification_cdr(stamp, top, frame_id='cam'))
        for k, stamp in enumerate((100, 101, 102)):
            info = {'stamp': [0, stamp], 'class_id': 2, 'label': 'c', 'score': 0.5,
                    'latency_ms': 40.0 + k, 'keep_ratio': 0.5}
            writer.write('/p/frame_info', bags.STRING_MSGTYPE, 11 + 2 * k,
                         bags.string_cdr(json.dumps(info)))
    assert bags.bag_topics(tmp_path / 'rec')['/p/classification'] == (
        bags.CLASSIFICATION_MSGTYPE, 3)
    recording = bag_report.read_recording(tmp_path / 'rec')
    assert recording.class_map == dict(enumerate(CLASSES))
    results = {bag_report.stamp_to_ns(r['stamp']): r for _, r in recording.classifications}
    assert results[100]['source'] == 'typed' and results[100]['frame_id'] == 'cam'
    assert (results[100]['class_id'], results[100]['label'], results[100]['score']) == (
        0, 'a', 0.75)
    assert results[100]['top_k'] == [{'class_id': 0, 'score': 0.75, 'label': 'a'},
                                     {'class_id': 2, 'score': 0.25, 'label': 'c'}]
    assert (results[100]['latency_ms'], results[100]['keep_ratio']) == (40.0, 0.5)
    assert (results[102]['source'], results[102]['class_id']) == ('frame_info', 2)
    assert (results[103]['source'], results[103]['label']) == ('typed', 'b')
    assert 'latency_ms' not in results[103]
    report = bag_report.compute_report(recording, truth)
    # 100 right (typed 0, where frame_info says 2), 101 wrong, 102 right, 103 right
    assert report['accuracy_classified'] == pytest.approx(3 / 4)
    assert (report['results_typed'], report['results_frame_info']) == (3, 1)
    assert report['latency_ms']['max'] == 42.0
    assert report['label_info_matches_ground_truth'] is True
    renamed = dataclasses.replace(truth, class_names=('a', 'c', 'b'))
    assert bag_report.compute_report(recording, renamed)['label_info_matches_ground_truth'] is False


def test_typed_result_with_a_foreign_class_id_is_rejected(tmp_path: Path) -> None:
    store = bags.typestore()
    hypothesis_t = store.types['vision_msgs/msg/ObjectHypothesis']
    msg = store.types[bags.CLASSIFICATION_MSGTYPE](
        header=bags.image_message(IMAGES[0], 7).header,
        results=[hypothesis_t(class_id='cat', score=0.9)])
    with bags.RecordWriter(tmp_path / 'rec') as writer:
        writer.write('/p/classification', bags.CLASSIFICATION_MSGTYPE, 1,
                     store.serialize_cdr(msg, bags.CLASSIFICATION_MSGTYPE))
    with pytest.raises(BagError, match="/p/classification message at 1 ns: class_id is not"):
        bag_report.read_recording(tmp_path / 'rec')


def test_report_rejects_non_json(tmp_path: Path) -> None:
    with bags.RecordWriter(tmp_path / 'rec') as writer:
        writer.write('/n/frame_info', bags.STRING_MSGTYPE, 1, bags.string_cdr('{oops'))
    with pytest.raises(BagError, match='not JSON'):
        bag_report.read_recording(tmp_path / 'rec')


def test_bad_ground_truth(tmp_path: Path) -> None:
    with pytest.raises(BagError, match='no ground truth'):
        bags.read_labels(tmp_path)
    (tmp_path / 'labels.csv').write_text('index,stamp_ns,label,class_name,name\n0,x,1,a,n\n')
    with pytest.raises(BagError, match='malformed'):
        bags.read_labels(tmp_path)


@pytest.mark.skipif(not paths.cifar10_tar().is_file(), reason='needs ../shared CIFAR-10 tar')
def test_cifar10_source_matches_dataset(tmp_path: Path) -> None:
    from pls_perception.io.datasets import load_cifar10

    images, labels, names, class_names = bags.load_source_images('cifar10', per_class=2)
    ref_images, ref_labels, ref_names = load_cifar10(per_class=2)
    assert np.array_equal(images, ref_images) and names == ref_names
    bag = bags.write_image_bag(tmp_path / 'c10', images, labels, names,
                               class_names=class_names, storage='mcap').path
    truth = bags.read_labels(bag)
    assert truth.labels == tuple(ref_labels.tolist()) and truth.class_names[0] == 'airplane'
    assert np.array_equal(np.stack([f.rgb() for f in bags.read_image_frames(bag)]), ref_images)


def test_record_writer_from_many_threads(tmp_path: Path) -> None:
    """rclpy callbacks run on executor threads; sqlite3 objects belong to one thread."""
    import threading

    with bags.RecordWriter(tmp_path / 'rec', 'sqlite3') as writer:
        def burst(k: int) -> None:
            for i in range(20):
                writer.write(f'/t{k}/classification', bags.STRING_MSGTYPE, k * 100 + i,
                             bags.string_cdr(json.dumps({'i': i})))
        threads = [threading.Thread(target=burst, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert bags.bag_topics(tmp_path / 'rec') == {
        f'/t{k}/classification': (bags.STRING_MSGTYPE, 20) for k in range(3)}
    with pytest.raises(FileExistsError):
        bags.RecordWriter(tmp_path / 'rec')


def test_cli_make_info_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from pls_perception.tools import bag_cli

    (tmp_path / 'imgs').mkdir()
    for i, image in enumerate(IMAGES[:3]):
        Image.fromarray(image).save(tmp_path / 'imgs' / f'{i}.png')
    assert bag_cli.main(['make', '--source', str(tmp_path / 'imgs'), '-o', str(tmp_path / 'b'),
                         '--storage', 'mcap', '--encoding', 'bgr8', '--rate-hz', '5']) == 0
    assert bags.read_labels(tmp_path / 'b').labels == (-1, -1, -1)
    assert bag_cli.main(['info', str(tmp_path / 'b')]) == 0
    assert f'/image  {bags.IMAGE_MSGTYPE}  3' in capsys.readouterr().out
    _storage_file(tmp_path / 'b').write_bytes(b'garbage')
    assert bag_cli.main(['info', str(tmp_path / 'b')]) == 2
    assert 'pls-bag info: error: cannot open bag' in capsys.readouterr().err
    assert bag_cli.main(['make', '--source', str(tmp_path / 'none'),
                         '-o', str(tmp_path / 'c')]) == 2
    assert 'image source does not exist' in capsys.readouterr().err
