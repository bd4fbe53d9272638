import XCTest
@testable import MMCore
import MMSync

/// The VMA tree against a sorted array, and max_map_count as Linux 7.2 counts it.
final class VMATreeTests: XCTestCase {
    /// Random inserts, removals, bound changes and lookups, each compared with an array, with
    /// the tree's invariants (counts, gaps, depth) checked along the way.
    func testTreeMatchesASortedArray() throws {
        let machine = try Machine(memoryBytes: 16 << 20, devicePfnSpaceBytes: 0)
        let mm = try AddressSpace.create(on: machine)
        var tree = VMATree(floor: mmapMinAddress)
        var model: [VMA] = []
        var rng = SeededRNG(seed: 77)
        func slot(_ k: UInt64) -> UInt64 { mmapMinAddress + k * 4 * pageSize }   // room to grow each
        var used = Set<UInt64>()
        for step in 0..<20_000 {
            switch rng.next() % 10 {
            case 0...4:   // insert at its place
                let k = rng.next() % 5_000
                guard !used.contains(k) else { continue }
                used.insert(k)
                let v = VMA(mm: mm, start: slot(k), end: slot(k) + pageSize * (1 + rng.next() % 3), flags: [.read], pgoff: 0, file: nil)
                let i = model.firstIndex { $0.start > v.start } ?? model.count
                model.insert(v, at: i)
                tree.insert(v, at: i)
            case 5...7:   // remove
                guard !model.isEmpty else { continue }
                let i = Int(rng.next() % UInt64(model.count))
                used.remove((model[i].start - mmapMinAddress) / (4 * pageSize))
                XCTAssertTrue(tree.remove(at: i) === model.remove(at: i))
            case 8:       // change bounds in place (as split, merge and mremap do)
                guard !model.isEmpty else { continue }
                let i = Int(rng.next() % UInt64(model.count))
                let v = model[i]
                v.end = v.start + pageSize * (1 + rng.next() % 4)
                tree.boundsChanged(at: i)
            default:      // lookups
                let a = mmapMinAddress + rng.next() % (5_000 * 4 * pageSize)
                XCTAssertEqual(tree.index(atOrAfter: a), model.firstIndex { $0.end > a } ?? model.count)
                let len = pageSize * (1 + rng.next() % 8)
                let high = pageAlignDown(mmapMinAddress + rng.next() % (5_100 * 4 * pageSize))
                XCTAssertEqual(tree.highestFreeRange(length: len, below: high), bruteForce(model, len, high), "step \(step)")
            }
            if step % 1000 == 0 || tree.count != model.count {
                XCTAssertEqual(tree.count, model.count)
                XCTAssertEqual(tree.checkInvariants(), [], "step \(step)")
                XCTAssertTrue(zip(tree, model).allSatisfy { $0 === $1 })
                XCTAssertEqual(Array(tree).count, model.count)
                if !model.isEmpty { XCTAssertTrue(tree[model.count / 2] === model[model.count / 2]) }
            }
        }
        XCTAssertEqual(tree.checkInvariants(), [])
        XCTAssertGreaterThan(model.count, 500)
    }

    /// `unmapped_area_topdown` by walking every gap: the highest that fits below `high`.
    func bruteForce(_ vmas: [VMA], _ length: UInt64, _ high: UInt64) -> UInt64? {
        var best: UInt64? = nil
        var prevEnd = mmapMinAddress
        for v in vmas {
            let top = Swift.min(v.start, high)
            if top > prevEnd && top - prevEnd >= length { best = top - length }
            prevEnd = v.end
        }
        if high > prevEnd && high - prevEnd >= length { best = high - length }
        return best
    }

    /// Linux 7.2: mmap fails once there are more than max_map_count VMAs; mprotect's split
    /// fails at max_map_count; munmap fails only when it must split one VMA in two; mremap keeps
    /// room for four. Checked on a host 6.18 kernel with the same counts (65,531 VMAs reached
    /// by alternating 1-page mmaps, then ENOMEM for each of these).
    func testMaxMapCount() throws {
        let machine = try Machine(memoryBytes: 16 << 20, devicePfnSpaceBytes: 0)
        machine.maxMapCount = 100
        let mm = try AddressSpace.create(on: machine)
        let big = try mm.mmap(length: 3 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        var last: UInt64 = 0
        var mapped = 0
        while true {
            do { last = try mm.mmap(length: pageSize, prot: mapped % 2 == 0 ? .read : .readWrite, flags: [.private, .anonymous]); mapped += 1 } catch {
                XCTAssertEqual(error, .ENOMEM); break
            }
        }
        XCTAssertEqual(mm.vmaCount, 101)   // map_count > max fails: max + 1 is reached
        XCTAssertThrowsError(try mm.mprotect(big + pageSize, length: pageSize, prot: .read)) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        XCTAssertThrowsError(try mm.munmap(big + pageSize, length: pageSize)) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        XCTAssertThrowsError(try mm.mprotect(big, length: pageSize, prot: .read)) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        XCTAssertThrowsError(try mm.mremap(big, oldLength: pageSize, newLength: pageSize, flags: [.mayMove, .fixed], newAddress: 0x1000_0000)) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        XCTAssertEqual(mm.vmaCount, 101, "failed calls change nothing")
        // munmap of a VMA's head splits without counting (__split_vma): allowed at the limit.
        try mm.munmap(big, length: pageSize)
        XCTAssertEqual(mm.vmaCount, 101)
        try mm.munmap(last, length: pageSize)
        XCTAssertEqual(mm.vmaCount, 100)
        _ = try mm.mmap(length: pageSize, prot: [.read, .exec], flags: [.private, .anonymous])   // merges with nothing: 100 → 101
        XCTAssertThrowsError(try mm.mmap(length: pageSize, prot: .readWrite, flags: [.private, .anonymous])) { XCTAssertEqual($0 as? Errno, .ENOMEM) }
        XCTAssertEqual(machine.checkInvariants(), [])
    }
}
