"""A literal transcription of the official KVG-Bench scorer, used as the parity oracle.

Source: thunlp/DeepPerception @ ae5e8a8, ``deepperception/eval/evaluate.py`` (``bbox_patterns``,
``box_iou``, ``get_bbox``, ``calculate_ious``, the grounding branch of ``eval``) and
``deepperception/eval/inference.py`` (``PATTERN``, the GT parse and the temp-file dict).
Only two things are changed, both mechanical:

* ``torchvision.ops.boxes.box_area`` is inlined (torchvision cannot be installed beside the CPU
  torch here); it is ``(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])`` after ``_upcast``, which leaves
  float32 as float32.
* Temp JSON files and ``print``/``tqdm``/per-category dumps are replaced by in-memory dicts:
  ``temp_results`` plays ``output/temp/{question_id}.json`` and the function returns the string
  ``json.dump(all_metrics, f)`` would write. The temp dict is round-tripped through ``json`` as
  the official code reads it back from disk.

Do not "improve" this file: its value is that it is the official code.
"""

import json
import re

import torch

bbox_patterns = [
    re.compile(r'<answer>.*?\((\d*?),.*?(\d*?)\),\((\d*?),(\d*?)\)</answer>'),
    re.compile(r'So the answer is.*?\((\d*?),.*?(\d*?)\),\((\d*?),(\d*?)\)'),
    re.compile(r'\((\d*?),.*?(\d*?)\),\((\d*?),(\d*?)\)'),
    re.compile(r'\((.*?),.*?(.*?)\).*?\((.*?),.*?(.*?)\)'),
    re.compile(r'\[(\d*?), (\d*?), (\d*?), (\d*?)\]'),
    re.compile(r'\[(.*?), (.*?), (.*?), (.*?)\]'),
    re.compile(r'\((\d*?), (\d*?), (\d*?), (\d*?)\)'),
    re.compile(r'\((\d*?), (\d*?)\)\n?.*?\((\d*?), (\d*?)\)')
]

# inference.py
PATTERN = re.compile(r'<\|box_start\|>\(([0-9]*?),([0-9]*?)\),\(([0-9]*?),([0-9]*?)\)<\|box_end\|>')


def _upcast(t):
    # torchvision.ops._utils._upcast: float stays as is, integers go to int64/int32.
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def box_area(boxes):
    # torchvision.ops.boxes.box_area
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1, boxes2):
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)

    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])  # [N,M,2]
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])  # [N,M,2]

    wh = (rb - lt).clamp(min=0)  # [N,M,2]
    inter = wh[:, :, 0] * wh[:, :, 1]  # [N,M]

    union = area1[:, None] + area2 - inter

    iou = inter / union
    return iou, union


def get_bbox(ans):
    for i, pattern in enumerate(bbox_patterns):
        predict_bbox = re.findall(pattern, ans)
        if len(predict_bbox) != 0:
            try:
                predict_bbox = (float(predict_bbox[-1][0].replace('[', '').replace('x', '')), float(predict_bbox[-1][1]), float(predict_bbox[-1][2]), float(predict_bbox[-1][3]))
            except:  # noqa: E722 (verbatim)
                predict_bbox = [0, 0, 0, 0]
            if sum(predict_bbox) < 4:
                predict_bbox = [c*1000 for c in predict_bbox]

            return predict_bbox, i+1

    return (0., 0., 0., 0.), 0


def calculate_ious(category, results):
    ious = []
    correct = 0
    match_patterns_cnt = [0] * (len(bbox_patterns) + 1)
    for r in results:
        answer = r['answer']

        predict_bbox, i = get_bbox(answer)
        r['pred_bbox'] = predict_bbox
        predict_bbox = torch.tensor(predict_bbox, dtype=torch.float32).view(-1, 4)

        max_iou = 0
        for gt_bbox in r['gt_bbox']:
            target_bbox = torch.tensor(gt_bbox, dtype=torch.float32).view(-1, 4)
            iou, _ = box_iou(predict_bbox, target_bbox)
            iou = iou.item()
            if iou > max_iou:
                max_iou = iou

        ious.append(max_iou)
        r['iou'] = max_iou
        r['match pattern'] = i
        match_patterns_cnt[i] += 1
        if max_iou >= 0.5:
            correct += 1

    metrics = dict()
    acc = correct / len(ious)
    avg_iou = sum(ious)/len(ious)

    metrics['all'] = {
        'Acc': acc,
        'IoU': avg_iou,
        'Num': len(ious)
    }

    return results, metrics


def inference_temp_record(data, answer):
    """What inference.py writes to output/temp/{question_id}.json (grounding, no cot-kvg)."""
    gt = data['answer']
    match = re.search(PATTERN, gt)
    bbox = [[float(match[1]), float(match[2]), float(match[3]), float(match[4])]]
    response = {'answer': answer}
    response['gt_bbox'] = bbox
    response['hw'] = (1, 1)  # image size; unused by the scorer
    return json.loads(json.dumps(response))  # written then read back as JSON


def official_metrics_json(test_data, temp_results,
                          seen_categories='aircraft,car,reptilia,bird,food',
                          all_categories='aircraft,car,reptilia,bird,food,dog,mollusca,mammal,flower,landmark'):
    """The grounding branch of ``eval``; returns what it writes to metrics.json.

    ``test_data``: iterable of dicts with question_id / category / answer (the parquet rows).
    ``temp_results``: question_id -> temp record (see :func:`inference_temp_record`).
    """
    all_metrics = dict()
    seen_categories = seen_categories.split(',')
    all_categories = all_categories.split(',')

    results = {d: [] for d in all_categories}

    all_res = []
    seen_res = []
    unseen_res = []
    for data in test_data:
        r = json.loads(json.dumps(temp_results[data["question_id"]]))
        results[data["category"]].append(r)
        all_res.append(r)
        if data["category"] in seen_categories:
            seen_res.append(r)
        else:
            unseen_res.append(r)

    all_res, metrics = calculate_ious('all', all_res)
    all_metrics['all'] = metrics

    seen_res, metrics = calculate_ious('seen domain', seen_res)
    all_metrics['seen domain'] = metrics

    unseen_res, metrics = calculate_ious('unseen domain', unseen_res)
    all_metrics['unseen domain'] = metrics

    for dataset, res in results.items():
        res, metrics = calculate_ious(dataset, res)
        all_metrics[dataset] = metrics

    return json.dumps(all_metrics)
