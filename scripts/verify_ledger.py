#!/usr/bin/env python3
"""Verify a jobledger JSONL export (docs/ledger-format.md): python3 scripts/verify_ledger.py FILE"""
import hashlib, json, sys

def num(f):  # RFC 8785 number: ECMAScript Number::toString of the IEEE double
    if f != f or f in (float('inf'), float('-inf')): raise ValueError('non-finite number')
    if f == 0: return '0'
    m, _, e = repr(abs(f)).partition('e')  # repr gives the shortest round-trip digits
    i, _, fr = m.partition('.')
    d = (i + fr).strip('0'); k = len(d); n = len(i) - (len(i + fr) - len((i + fr).lstrip('0'))) + int(e or 0)
    if k <= n <= 21: r = d + '0' * (n - k)
    elif 0 < n <= 21: r = d[:n] + '.' + d[n:]
    elif -6 < n <= 0: r = '0.' + '0' * -n + d
    else: r = d[0] + ('.' + d[1:] if k > 1 else '') + 'e' + ('+' if n > 0 else '-') + str(abs(n - 1))
    return ('-' if f < 0 else '') + r

def jcs(v):  # RFC 8785 canonical JSON text
    if isinstance(v, dict): return '{' + ','.join(jcs(k) + ':' + jcs(v[k]) for k in sorted(v, key=lambda k: k.encode('utf-16-be'))) + '}'
    if isinstance(v, list): return '[' + ','.join(map(jcs, v)) + ']'
    if isinstance(v, float) or (type(v) is int and abs(v) >= 2 ** 53): return num(float(v))
    return json.dumps(v, ensure_ascii=False)  # strings (same escapes as JCS), ints, true, false, null

heads, seen, pins, bad = {}, {}, [], []
for no, line in enumerate(open(sys.argv[1], encoding='utf-8'), 1):
    if not line.strip(): continue
    e = json.loads(line)
    if 'pin' in e: pins.append((no, e['pin'])); continue
    j, v = e['job_id'], e['version']
    prev, head = heads.get(j, ('0' * 64, 0))
    h = hashlib.sha256(bytes.fromhex(e['prev_hash']) + jcs({k: x for k, x in e.items() if k != 'hash'}).encode()).hexdigest()
    if v != head + 1: bad.append(f'line {no}: job {j} version {v} follows version {head}')
    if e['prev_hash'] != prev: bad.append(f'line {no}: job {j} v{v} prev_hash does not link to v{head}')
    if h != e['hash']: bad.append(f'line {no}: job {j} v{v} stored hash {e["hash"]}, content hashes to {h}')
    heads[j] = (e['hash'], v); seen[(j, v)] = e['hash']
for no, p in pins:
    if seen.get((p['job_id'], p['version'])) != p['hash'].lower(): bad.append(f'line {no}: pin {p["job_id"]} v{p["version"]} {p["hash"]} does not match the ledger')
print('\n'.join(bad + [f'{"FAILED" if bad else "OK"}: {len(seen)} events, {len(heads)} jobs, {len(pins)} pins']))
sys.exit(1 if bad else 0)
