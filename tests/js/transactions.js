// kafkajs transactions against Strata: producer.transaction(), transaction.send,
// transaction.sendOffsets, commit() and abort().
//   node transactions.js BROKER OUTPUT_TOPIC INPUT_TOPIC GROUP TRANSACTIONAL_ID
// txn 1: sends c1-0..c1-9 to OUTPUT_TOPIC, sendOffsets INPUT_TOPIC p0=5 p1=7, commit
// txn 2: sends a-0..a-9, sendOffsets INPUT_TOPIC p0=10 p1=10, abort
// txn 3: sends c2-0..c2-9, commit
// Prints one "RESULT {json}" line; driven by tests/integration/test_transactions.py,
// which checks what a read_committed reader and the group's offsets show.
const { Kafka, logLevel } = require('kafkajs')

const [broker, outTopic, inTopic, groupId, transactionalId] = process.argv.slice(2)
const kafka = new Kafka({
  clientId: 'strata-txn',
  brokers: [broker],
  logLevel: logLevel.ERROR,
  retry: { retries: 8 }
})

const messages = (prefix) =>
  Array.from({ length: 10 }, (_, i) => ({ key: `k${i % 4}`, value: `${prefix}-${i}` }))

async function main () {
  const producer = kafka.producer({ transactionalId, maxInFlightRequests: 1, idempotent: true, transactionTimeout: 30000 })
  await producer.connect()
  const result = { steps: [] }

  const t1 = await producer.transaction()
  const r1 = await t1.send({ topic: outTopic, messages: messages('c1') })
  await t1.sendOffsets({
    consumerGroupId: groupId,
    topics: [{ topic: inTopic, partitions: [{ partition: 0, offset: '5' }, { partition: 1, offset: '7' }] }]
  })
  await t1.commit()
  result.steps.push({ txn: 'c1', action: 'commit', sent: r1 })

  const t2 = await producer.transaction()
  const r2 = await t2.send({ topic: outTopic, messages: messages('a') })
  await t2.sendOffsets({
    consumerGroupId: groupId,
    topics: [{ topic: inTopic, partitions: [{ partition: 0, offset: '10' }, { partition: 1, offset: '10' }] }]
  })
  await t2.abort()
  result.steps.push({ txn: 'a', action: 'abort', sent: r2 })

  const t3 = await producer.transaction()
  const r3 = await t3.send({ topic: outTopic, messages: messages('c2') })
  await t3.commit()
  result.steps.push({ txn: 'c2', action: 'commit', sent: r3 })

  await producer.disconnect()
  console.log('RESULT ' + JSON.stringify(result))
}

main().catch((e) => {
  console.error('FAILED', e && (e.stack || e), e && e.type, e && e.code)
  process.exit(1)
})
