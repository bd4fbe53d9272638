import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// An interval notifier over the whole space that records the events it sees.
final class EventRecorder {
    private(set) var events: [String] = []
    let lock = Lock("event-recorder")
    var sub: MMUIntervalNotifier!
    init(_ mm: AddressSpace, start: UInt64 = 0, end: UInt64 = taskSize) throws {
        sub = MMUIntervalNotifier(start: start, end: end) { [unowned self] sub, range, seq in
            self.lock.withLock { self.events.append("\(range.event)"); sub.setSeq(seq) }
            return true
        }
        try mm.notifiers.insert(sub)
    }
    func take() -> [String] { lock.withLock { defer { events.removeAll() }; return events } }
}

/// A whole-address-space subscriber (`struct mmu_notifier`) that records every call and can be
/// told to fail non-blockable starts.
final class RecordingSubscriber: MMUNotifier {
    let name: String
    let failNonBlocking: Bool
    let lock = Lock("recording-subscriber")
    private(set) var calls: [String] = []
    init(_ name: String, failNonBlocking: Bool = false) { self.name = name; self.failNonBlocking = failNonBlocking }
    func invalidateRangeStart(_ range: MMUNotifierRange) -> Bool {
        lock.withLock { calls.append("\(name) start \(range.event)") }
        return range.blockable || !failNonBlocking
    }
    func invalidateRangeEnd(_ range: MMUNotifierRange) { lock.withLock { calls.append("\(name) end \(range.event)") } }
    func release(_ mm: AddressSpace) { lock.withLock { calls.append("\(name) release") } }
    func take() -> [String] { lock.withLock { defer { calls.removeAll() }; return calls } }
}
