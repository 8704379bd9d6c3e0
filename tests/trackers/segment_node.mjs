// Sends through Segment's Node SDK, unchanged, to a running Tally: tests/trackers.rs runs
// this and checks what Tally's read APIs answer. Reads TALLY_URL and TALLY_WRITE_KEY; exits 1
// if the SDK reports an error.
import { Analytics } from '@segment/analytics-node'

const failures = []
const analytics = new Analytics({
  writeKey: process.env.TALLY_WRITE_KEY,
  host: process.env.TALLY_URL,
  maxRetries: 0,
})
analytics.on('error', (error) => failures.push(String(error?.reason ?? error)))

const order = {
  userId: 'u-seg-node',
  event: 'Order Completed',
  messageId: 'seg-node-1',
  properties: { revenue: 20 },
  context: { os: { name: 'macOS' } },
}
analytics.track(order)
analytics.track(order) // a resend: the same messageId counts once
analytics.page({
  userId: 'u-seg-node',
  name: 'Home',
  messageId: 'seg-node-2',
  properties: { url: 'https://shop.example/node' },
})
analytics.identify({ userId: 'u-seg-node', traits: { country: 'DE' }, messageId: 'seg-node-3' })
await analytics.closeAndFlush()
console.log(JSON.stringify({ failures }))
process.exit(failures.length ? 1 : 0)
