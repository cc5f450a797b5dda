// SPDY/3.1 client (node spdy-transport) for berth's spdy interop test.
// Usage: node client.js PORT STREAMS BYTES
// Opens STREAMS streams with headers {streamtype, seed}, sends BYTES bytes on each, ends it,
// and expects back the same bytes with every byte XOR 0x5a. Prints "OK" or exits 1.
'use strict'
const net = require('net')
const transport = require('spdy-transport')

const [port, streams, bytes] = process.argv.slice(2).map(Number)
const socket = net.connect(port, '127.0.0.1')
const conn = transport.connection.create(socket, { protocol: 'spdy', isServer: false })
conn.start(3.1)
const fail = (m) => { console.error('FAIL ' + m); process.exit(1) }
setTimeout(() => fail('timeout'), 60000).unref()

function pattern (seed, n) {
  const b = Buffer.alloc(n)
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7) & 0xff
  return b
}

let done = 0
for (let s = 0; s < streams; s++) {
  const data = pattern(s, bytes)
  const req = conn.request({
    method: 'POST', path: '/stream/' + s, host: 'localhost',
    headers: { streamtype: 'data', seed: String(s) }
  }, (err) => { if (err) fail('request: ' + err) })
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('error', (e) => fail('stream ' + s + ': ' + e))
  req.on('end', () => {
    const got = Buffer.concat(chunks)
    if (got.length !== bytes) fail('stream ' + s + ' got ' + got.length + ' bytes')
    for (let i = 0; i < bytes; i++) if (got[i] !== (data[i] ^ 0x5a)) fail('stream ' + s + ' byte ' + i)
    if (++done === streams) {
      conn.ping(() => { console.log('OK'); conn.end(() => process.exit(0)); setTimeout(() => process.exit(0), 1000) })
    }
  })
  req.end(data)
}
