// The local server driven by the official npm `openwhisk` client (an independent implementation).
// Run by tests/test_server_js.py; env: OW_APIHOST, OW_API_KEY, NARROW_APIHOST, ZIP_PATH,
// VENV_ZIP_PATH, KIND. Prints "ok <section>" per section; exits non-zero on the first failure.
'use strict'
const assert = require('node:assert/strict')
const fs = require('node:fs')
const openwhisk = require('openwhisk')

const env = process.env
const ow = openwhisk({ apihost: env.OW_APIHOST, api_key: env.OW_API_KEY })
const narrow = openwhisk({ apihost: env.NARROW_APIHOST, api_key: env.OW_API_KEY })
const kind = env.KIND
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
const note = (record, key) => (record.annotations.find(a => a.key === key) || {}).value
const SLEEPY = 'import time\ndef main(args):\n    print("sleeping", args.get("s", 1))\n' +
  '    time.sleep(args.get("s", 1))\n    return {"slept": args.get("s", 1)}\n'

async function rejects (promise, statusCode, message) {
  try {
    await promise
  } catch (err) {
    assert.equal(err.statusCode, statusCode, err.message)
    if (message) assert.ok(err.message.includes(message), err.message)
    return err
  }
  assert.fail(`expected HTTP ${statusCode}`)
}

async function poll (client, activationId) {
  for (let i = 0; i < 300; i++) {
    try {
      return await client.activations.get({ activationId })
    } catch (err) {
      if (err.statusCode !== 404) throw err
      await sleep(50)
    }
  }
  assert.fail(`activation ${activationId} never finished`)
}

const sections = {
  async crud () {
    const created = await ow.actions.create({ name: 'js-echo', action: 'def main(args):\n    print("hello", args)\n    return {"got": args}\n', kind })
    assert.equal(created.version, '0.0.1')
    assert.equal(created.exec.kind, kind)
    await rejects(ow.actions.create({ name: 'js-echo', action: 'x', kind }), 409, 'resource already exists')
    const updated = await ow.actions.update({ name: 'js-echo', action: 'def main(args):\n    print("hello", args)\n    return {"got": args}\n', kind, limits: { timeout: 10000 } })
    assert.equal(updated.version, '0.0.2')
    assert.equal(updated.limits.timeout, 10000)
    const fetched = await ow.actions.get({ name: 'js-echo' })
    assert.ok(fetched.exec.code.includes('hello'))
    const noCode = await ow.actions.get({ name: 'js-echo', code: false })
    assert.equal(noCode.exec.code, undefined)
    const list = await ow.actions.list()
    assert.ok(list.some(a => a.name === 'js-echo'))
  },
  async invoke () {
    const first = await ow.actions.invoke({ name: 'js-echo', blocking: true, params: { a: 1 } })
    assert.deepEqual(first.response.result, { got: { a: 1 } })
    assert.equal(first.response.status, 'success')
    assert.ok(note(first, 'initTime') >= 0)
    const second = await ow.actions.invoke({ name: 'js-echo', blocking: true, params: { a: 2 } })
    assert.equal(note(second, 'initTime'), undefined) // warm container reused
    const result = await ow.actions.invoke({ name: 'js-echo', blocking: true, result: true, params: { b: 3 } })
    assert.deepEqual(result, { got: { b: 3 } })
    const { activationId } = await ow.actions.invoke({ name: 'js-echo', params: { c: 4 } })
    assert.match(activationId, /^[0-9a-f]{32}$/)
    const record = await poll(ow, activationId)
    assert.deepEqual(record.response.result, { got: { c: 4 } })
    const byResult = await ow.activations.result({ activationId })
    assert.deepEqual(byResult.result, { got: { c: 4 } })
    const logs = await ow.activations.logs({ activationId })
    assert.equal(logs.logs.length, 1)
    assert.match(logs.logs[0], /^\d{4}-\d\d-\d\dT[\d:.]+Z stdout: hello \{'c': 4\}$/)
    const listed = await ow.activations.list({ name: 'js-echo', limit: 2 })
    assert.equal(listed.length, 2)
    assert.equal(listed[0].activationId, activationId) // newest first
  },
  async notYet () {
    await ow.actions.create({ name: 'js-sleep', action: SLEEPY, kind })
    const { activationId } = await ow.actions.invoke({ name: 'js-sleep', params: { s: 0.8 } })
    await rejects(ow.activations.get({ activationId }), 404, 'The requested resource does not exist.')
    const record = await poll(ow, activationId)
    assert.deepEqual(record.response.result, { slept: 0.8 })
  },
  async errors () {
    const wrong = openwhisk({ apihost: env.OW_APIHOST, api_key: env.OW_API_KEY.slice(0, -1) + 'x' })
    await rejects(wrong.actions.list(), 401, 'The supplied authentication is invalid')
    await rejects(ow.actions.get({ name: 'js-missing' }), 404)
    await rejects(ow.actions.invoke({ name: 'js-echo', params: { big: 'x'.repeat(1048576) } }), 413, 'Request larger than allowed')
    await rejects(ow.actions.create({ name: 'js-huge', action: 'x', kind, limits: { memory: 1024 } }), 400, 'exceeds allowed threshold of 512 MB')
  },
  async limits () {
    await ow.actions.create({ name: 'js-slow', action: SLEEPY, kind, limits: { timeout: 300 } })
    const timedOut = await rejects(ow.actions.invoke({ name: 'js-slow', blocking: true, params: { s: 3 } }), 502)
    assert.equal(timedOut.error.response.status, 'action developer error')
    assert.deepEqual(timedOut.error.response.result, { error: 'The action exceeded its time limits of 300 milliseconds.' })
    assert.equal(note(timedOut.error, 'timeout'), true)
    await ow.actions.create({ name: 'js-oom', action: 'import time\ndef main(args):\n    b = bytearray(300 * 1024 * 1024)\n    time.sleep(2)\n    return {}\n', kind, limits: { memory: 128 } })
    const oom = await rejects(ow.actions.invoke({ name: 'js-oom', blocking: true }), 502)
    assert.deepEqual(oom.error.response.result, { error: 'The action exhausted its memory and was aborted.' })
  },
  async concurrency () {
    await narrow.actions.create({ name: 'js-sleep', action: SLEEPY, kind })
    const accepted = await Promise.all([1, 2].map(() => narrow.actions.invoke({ name: 'js-sleep', params: { s: 1 } })))
    await rejects(narrow.actions.invoke({ name: 'js-sleep', params: { s: 1 } }), 429, 'Too many concurrent requests in flight (count: 2, allowed: 2).')
    for (const { activationId } of accepted) await poll(narrow, activationId)
  },
  async zips () {
    const zip = fs.readFileSync(env.ZIP_PATH)
    await ow.actions.create({ name: 'js-zip', action: zip, kind })
    assert.deepEqual(await ow.actions.invoke({ name: 'js-zip', blocking: true, result: true }), { v: 42 })
    await ow.actions.create({ name: 'js-venv', action: fs.readFileSync(env.VENV_ZIP_PATH), kind })
    const venv = await ow.actions.invoke({ name: 'js-venv', blocking: true, result: true })
    assert.equal(venv.v, 'from the virtualenv')
    assert.ok(venv.file.includes('virtualenv'), venv.file)
  }
}

async function main () {
  for (const [name, section] of Object.entries(sections)) {
    await section()
    console.log(`ok ${name}`)
  }
}

main().catch(err => {
  console.error(err)
  process.exit(1)
})
