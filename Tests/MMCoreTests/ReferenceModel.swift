@testable import MMCore

/// A plain model of what Linux guarantees about memory contents and errno for the calls the
/// differential test makes. It knows nothing of page tables: only VMAs (range, protection,
/// private or shared) and the values of 8-byte words.
final class RefObject {
    /// Shared anonymous memory: word values by byte offset in the object.
    var words: [UInt64: UInt64] = [:]
    /// The object's size: the length of the mapping that created it (mremap does not grow it).
    let size: UInt64
    init(size: UInt64) { self.size = size }
}

struct RefVMA {
    var start: UInt64
    var end: UInt64
    var prot: Protection
    /// nil: private anonymous. Otherwise the shared object and the object offset of `start`.
    var object: RefObject?
    var objectOffset: UInt64
}

final class RefProcess {
    var vmas: [RefVMA] = []
    /// Private anonymous memory: word values by virtual address.
    var privateWords: [UInt64: UInt64] = [:]

    func copy() -> RefProcess {
        let c = RefProcess(); c.vmas = vmas; c.privateWords = privateWords; return c
    }

    func vma(at a: UInt64) -> RefVMA? { vmas.first { $0.start <= a && a < $0.end } }

    enum Access: Equatable { case value(UInt64), segv, bus }

    func load(_ a: UInt64) -> Access {
        guard let v = vma(at: a), !v.prot.isEmpty else { return .segv }
        if let o = v.object {
            let off = v.objectOffset + a - v.start
            return off < o.size ? .value(o.words[off] ?? 0) : .bus
        }
        return .value(privateWords[a] ?? 0)
    }

    func store(_ a: UInt64, _ value: UInt64) -> Access {
        guard let v = vma(at: a), v.prot.contains(.write) else { return .segv }
        if let o = v.object {
            let off = v.objectOffset + a - v.start
            guard off < o.size else { return .bus }
            o.words[off] = value
        } else { privateWords[a] = value }
        return .value(value)
    }

    // MARK: VMA surgery

    /// Cuts VMAs at `a` so that a VMA boundary falls there.
    func split(at a: UInt64) {
        guard let i = vmas.firstIndex(where: { $0.start < a && a < $0.end }) else { return }
        var tail = vmas[i]
        tail.objectOffset += a - tail.start
        tail.start = a
        vmas[i].end = a
        vmas.insert(tail, at: i + 1)
    }

    func removeRange(_ s: UInt64, _ e: UInt64) {
        split(at: s); split(at: e)
        vmas.removeAll { $0.start >= s && $0.end <= e }
        privateWords = privateWords.filter { !($0.key >= s && $0.key < e) }
    }

    func insert(_ v: RefVMA) {
        vmas.append(v)
        vmas.sort { $0.start < $1.start }
    }

    func isFree(_ s: UInt64, _ e: UInt64) -> Bool { !vmas.contains { $0.start < e && s < $0.end } }

    // MARK: system calls (errno rules written from the man pages and mm/*.c, independently)

    func mmap(fixedAt a: UInt64?, returned: UInt64?, length: UInt64, prot: Protection, shared: Bool) -> Result<UInt64, Errno> {
        if length == 0 { return .failure(.EINVAL) }
        let len = (length + 4095) & ~4095
        if let a, a & 4095 != 0 { return .failure(.EINVAL) }
        let start: UInt64
        if let a { start = a } else {
            guard let r = returned, r & 4095 == 0, isFree(r, r + len) else { return .failure(.ENOMEM) }
            start = r
        }
        removeRange(start, start + len)
        insert(RefVMA(start: start, end: start + len, prot: prot, object: shared ? RefObject(size: len) : nil, objectOffset: 0))
        return .success(start)
    }

    func munmap(_ a: UInt64, _ length: UInt64) -> Errno? {
        if a & 4095 != 0 || length == 0 { return .EINVAL }
        removeRange(a, a + ((length + 4095) & ~4095))
        return nil
    }

    func mprotect(_ a: UInt64, _ length: UInt64, _ prot: Protection) -> Errno? {
        if a & 4095 != 0 || prot.rawValue & ~0xF != 0 { return .EINVAL }
        if length == 0 { return nil }
        let e = a + ((length + 4095) & ~4095)
        guard vma(at: a) != nil else { return .ENOMEM }
        split(at: a); split(at: e)
        var cursor = a
        for i in vmas.indices where vmas[i].start >= a && vmas[i].start < e {
            if vmas[i].start != cursor { return .ENOMEM }
            vmas[i].prot = Protection(rawValue: prot.rawValue & 0x7)
            cursor = vmas[i].end
        }
        return cursor < e ? .ENOMEM : nil
    }

    func madvise(_ a: UInt64, _ length: UInt64, _ advice: MadviseAdvice) -> Errno? {
        // MADV_PAGEOUT and MADV_COLD change no contents (the pages come back on a touch).
        if a & 4095 != 0 || ![MadviseAdvice.dontNeed, .free, .normal, .pageout, .cold].contains(advice) { return .EINVAL }
        if length == 0 { return nil }
        let e = a + ((length + 4095) & ~4095)
        var cursor = a
        var hole = false
        for v in vmas where v.end > a && v.start < e {
            if v.start > cursor { hole = true }
            if advice == .free && v.object != nil { return .EINVAL }
            if advice == .dontNeed && v.object == nil {
                let s = max(a, v.start), t = min(e, v.end)
                privateWords = privateWords.filter { !($0.key >= s && $0.key < t) }
            }
            cursor = v.end
        }
        return hole || cursor < e ? .ENOMEM : nil
    }

    func mremap(_ a: UInt64, _ oldLength: UInt64, _ newLength: UInt64, _ flags: MremapFlags, _ target: UInt64,
                returned: UInt64?) -> Result<UInt64, Errno> {
        if flags.rawValue & ~7 != 0 { return .failure(.EINVAL) }
        if flags.contains(.fixed) && !flags.contains(.mayMove) { return .failure(.EINVAL) }
        if flags.contains(.dontUnmap) && (!flags.contains(.mayMove) || oldLength != newLength) { return .failure(.EINVAL) }
        if a & 4095 != 0 { return .failure(.EINVAL) }
        let oldLen = (oldLength + 4095) & ~4095, newLen = (newLength + 4095) & ~4095
        if newLen == 0 || oldLen == 0 { return .failure(.EINVAL) }
        if flags.contains(.fixed) {
            if target & 4095 != 0 { return .failure(.EINVAL) }
            if target < a + oldLen && a < target + newLen { return .failure(.EINVAL) }
        }
        guard let v = vma(at: a) else { return .failure(.EFAULT) }
        // A shrink may cross VMA boundaries in the part it unmaps (also before a FIXED move).
        let shrink = newLen < oldLen
        if a + (shrink ? newLen : oldLen) > v.end { return .failure(.EFAULT) }
        if flags.contains(.fixed) || flags.contains(.dontUnmap) {
            let to = flags.contains(.fixed) ? target : returned!
            return .success(move(a, oldLen, to: to, newLen, dontUnmap: flags.contains(.dontUnmap)))
        }
        if newLen <= oldLen {
            if newLen < oldLen { removeRange(a + newLen, a + oldLen) }
            return .success(a)
        }
        if a + oldLen == v.end && isFree(v.end, a + newLen) {
            let i = vmas.firstIndex { $0.start == v.start }!
            vmas[i].end = a + newLen
            return .success(a)
        }
        if !flags.contains(.mayMove) { return .failure(.ENOMEM) }
        guard let r = returned, isFree(r, r + newLen) else { return .failure(.ENOMEM) }
        return .success(move(a, oldLen, to: r, newLen, dontUnmap: false))
    }

    private func move(_ a: UInt64, _ oldLen: UInt64, to t: UInt64, _ newLen: UInt64, dontUnmap: Bool) -> UInt64 {
        removeRange(t, t + newLen)
        split(at: a); split(at: a + oldLen)
        let old = vma(at: a)!
        let moveLen = min(oldLen, newLen)
        var moved: [UInt64: UInt64] = [:]
        for (k, val) in privateWords where k >= a && k < a + moveLen { moved[t + (k - a)] = val }
        if !dontUnmap { removeRange(a, a + oldLen) } else {
            privateWords = privateWords.filter { !($0.key >= a && $0.key < a + oldLen) }
        }
        insert(RefVMA(start: t, end: t + newLen, prot: old.prot, object: old.object, objectOffset: old.objectOffset))
        privateWords.merge(moved) { $1 }
        return t
    }
}
