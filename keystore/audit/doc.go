// Package audit is Custos's audit trail: every call is one event, the leaf
// of an append-only RFC 6962 Merkle tree kept in the key store, with
// checkpoints signed by a deployment key that is wrapped under the root like
// a tenant KEK.
//
// Events travel in three steps:
//
//   - Writer.Record makes an event durable before the call is answered:
//     events are group-committed, many to one store transaction, into a
//     queue record (audit/q/…); when the store cannot take them they go to a
//     local append-only spool file and are shipped, in order and exactly
//     once, when it is back.
//   - Log.Integrate, run by one replica at a time under a lease, moves queued
//     events into the tree: each gets the next leaf index, its body is
//     stored for the log (audit/l/…) and for its tenant (audit/t/…), and the
//     tree's node hashes (audit/n/…) with it, in one atomic Apply.
//   - Log.Sign signs a checkpoint (C2SP tlog-checkpoint, signed note) at
//     most every few seconds; Log.Events answers a tenant's events with
//     inclusion proofs against it, and Verify recomputes the whole tree.
//
// docs/audit.md describes the event schema, the formats and how a tenant
// verifies its events.
package audit
