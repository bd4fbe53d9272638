import XCTest
@testable import MMSync

final class MMSyncTests: XCTestCase {
    func testLockCountsExactlyUnderContention() {
        let lock = Lock("t")
        var counter = 0
        let threads = (0..<4).map { _ in
            ModelThread.spawn { for _ in 0..<20_000 { lock.lock(); counter += 1; lock.unlock() } }
        }
        threads.forEach { $0.join() }
        XCTAssertEqual(counter, 80_000)
        XCTAssertFalse(lock.isHeldByCurrentThread)
    }

    func testLockOwnershipIsTracked() {
        let lock = Lock("t")
        XCTAssertTrue(lock.tryLock())
        XCTAssertTrue(lock.isHeldByCurrentThread)
        var otherGot = true
        ModelThread.spawn { otherGot = lock.tryLock() }.join()
        XCTAssertFalse(otherGot)
        lock.unlock()
        XCTAssertFalse(lock.isHeldByCurrentThread)
    }

    func testSpinLockInRawMemory() {
        let word = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        word.storeBytes(of: UInt64(0), as: UInt64.self)
        defer { word.deallocate() }
        let spin = SpinLockRef(word)
        var counter = 0
        let threads = (0..<3).map { _ in
            ModelThread.spawn { for _ in 0..<20_000 { spin.lock(); counter += 1; spin.unlock() } }
        }
        threads.forEach { $0.join() }
        XCTAssertEqual(counter, 60_000)
        XCTAssertFalse(spin.isLocked)
        XCTAssertTrue(spin.tryLock())
        XCTAssertTrue(spin.isHeldByCurrentThread)
        XCTAssertEqual(word.load(as: UInt64.self), currentThreadID())
        spin.unlock()
        XCTAssertEqual(word.load(as: UInt64.self), 0)
    }

    func testRWSemExcludesWritersFromReaders() {
        let sem = RWSem("t")
        let inside = AtomicCounter(0)
        let violations = AtomicCounter(0)
        var shared = 0
        let readers = (0..<3).map { _ in
            ModelThread.spawn {
                for _ in 0..<5_000 {
                    sem.lockRead(); inside.add(1)
                    if inside.load() < 0 { violations.add(1) }
                    _ = shared
                    inside.add(-1); sem.unlockRead()
                }
            }
        }
        let writer = ModelThread.spawn {
            for _ in 0..<5_000 {
                sem.lockWrite()
                if inside.load() != 0 { violations.add(1) }
                shared += 1
                sem.unlockWrite()
            }
        }
        readers.forEach { $0.join() }; writer.join()
        XCTAssertEqual(violations.load(), 0)
        XCTAssertEqual(shared, 5_000)
        XCTAssertFalse(sem.isLocked)
    }

    func testRWSemDowngrade() {
        let sem = RWSem("t")
        sem.lockWrite()
        XCTAssertTrue(sem.isWriteLockedByCurrentThread)
        sem.downgrade()
        XCTAssertFalse(sem.isWriteLockedByCurrentThread)
        XCTAssertTrue(sem.tryLockRead()) // a second reader gets in
        XCTAssertFalse(sem.tryLockWrite())
        sem.unlockRead(); sem.unlockRead()
        XCTAssertTrue(sem.tryLockWrite())
        sem.unlockWrite()
    }

    func testBitLockWithSleepingWaiters() {
        let word = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        word.storeBytes(of: UInt64(0b100), as: UInt64.self) // an unrelated bit stays set
        defer { word.deallocate() }
        let ref = AtomicU64Ref(word)
        var counter = 0
        let threads = (0..<4).map { _ in
            ModelThread.spawn { for _ in 0..<5_000 { BitLock.lock(ref, bit: 1); counter += 1; BitLock.unlock(ref, bit: 1) } }
        }
        threads.forEach { $0.join() }
        XCTAssertEqual(counter, 20_000)
        XCTAssertEqual(ref.load(), 0b100)
    }

    func testBitLockWaitUnlocked() {
        let word = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        word.storeBytes(of: UInt64(1), as: UInt64.self)
        defer { word.deallocate() }
        let ref = AtomicU64Ref(word)
        XCTAssertFalse(BitLock.waitUnlocked(ref, bit: 1, timeoutNanoseconds: 2_000_000))
        let t = ModelThread.spawn { syncSleep(nanoseconds: 2_000_000); BitLock.unlock(ref, bit: 1) }
        XCTAssertTrue(BitLock.waitUnlocked(ref, bit: 1, timeoutNanoseconds: 5_000_000_000))
        t.join()
        XCTAssertEqual(ref.load(), 0)
    }

    func testSeqCountReaderSeesWriter() {
        let seq = SeqCount()
        let s0 = seq.readBegin()
        XCTAssertFalse(seq.readRetry(s0))
        seq.writeBegin(); seq.writeEnd()
        XCTAssertTrue(seq.readRetry(s0))
        XCTAssertEqual(seq.value, s0 + 2)
    }

    func testCompletionAndWaitQueueTimeout() {
        let c = Completion()
        XCTAssertFalse(c.wait(timeoutNanoseconds: 1_000_000))
        let t = ModelThread.spawn { c.complete() }
        XCTAssertTrue(c.wait(timeoutNanoseconds: 5_000_000_000))
        t.join()
        XCTAssertTrue(c.isCompleted)
    }

    func testFaultInjectionIsCounted() {
        FaultInjection.arm(.frameAllocation, count: 2)
        XCTAssertTrue(FaultInjection.shouldFail(.frameAllocation))
        XCTAssertFalse(FaultInjection.shouldFail(.pageTableAllocation))
        XCTAssertTrue(FaultInjection.shouldFail(.frameAllocation))
        XCTAssertFalse(FaultInjection.shouldFail(.frameAllocation))
        FaultInjection.disarmAll()
    }
}
