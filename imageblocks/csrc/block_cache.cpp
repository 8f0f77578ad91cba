// PyTorch's CPU allocator with a cache of large blocks that splits and merges (see imageblocks/block_cache.py).
//
// Blocks of 1 MB and more come from segments mapped directly (mmap, transparent huge pages asked
// for). A freed block stays mapped and merges with free neighbours in its segment; a request is
// served by the smallest free block that holds it, split when the rest is 1 MB or more (as
// PyTorch's CUDA caching allocator does). A training step asks for the same sizes every step, so
// from the second step on its blocks are carved from memory already faulted in, whatever the mix
// of sizes. Mapped memory is bounded by 1.5x the largest working set seen: a request no free block
// holds first unmaps wholly free segments, largest first. Smaller blocks go to c10's own
// alloc_cpu / free_cpu. The C functions at the end are the whole interface (ctypes; no Python
// headers).

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <pthread.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>

namespace {

constexpr size_t kLarge = size_t{1} << 20;  // blocks from here on are cached; the smallest split
constexpr size_t kHuge = size_t{2} << 20;   // transparent huge page size and alignment
constexpr size_t kPage = 4096;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Stats {
  uint64_t in_use;     // bytes of large blocks held by tensors
  uint64_t cached;     // bytes of free blocks kept mapped for reuse
  uint64_t peak;       // most bytes in use at once
  uint64_t hits;       // requests served from a free block
  uint64_t misses;     // requests that mapped a new segment
  uint64_t evictions;  // wholly free segments unmapped to stay within the bound
};

// A run of bytes inside one segment; neighbours in address order, within the segment only.
struct Block {
  uintptr_t ptr;
  size_t size;
  Block* prev;
  Block* next;
  bool free;
  bool whole() const { return prev == nullptr && next == nullptr; }  // the segment itself
};

using FreeKey = std::pair<size_t, uintptr_t>;  // best fit: smallest size, then lowest address

class BlockCache {
 public:
  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    Block* b = nullptr;
    auto fit = free_.lower_bound(FreeKey{size, 0});
    if (fit != free_.end()) {
      b = by_ptr_.at(fit->second);
      unlist(b);
      ++stats_.hits;
      if (b->size - size >= kLarge) {  // the rest stays free, for the next request it holds
        Block* rest = new Block{b->ptr + size, b->size - size, b, b->next, true};
        if (b->next != nullptr) b->next->prev = rest;
        b->next = rest;
        b->size = size;
        by_ptr_[rest->ptr] = rest;
        list(rest);
      }
    } else {
      const size_t bound = std::max<size_t>(stats_.peak + stats_.peak / 2, stats_.in_use + size);
      evict_until(bound - size);
      void* p = map(size);
      if (p == nullptr) {  // out of address space or memory: give back every free segment, once
        evict_until(0);
        p = map(size);
        if (p == nullptr) return nullptr;
      }
      b = new Block{reinterpret_cast<uintptr_t>(p), size, nullptr, nullptr, false};
      by_ptr_[b->ptr] = b;
      mapped_ += size;
      ++stats_.misses;
    }
    b->free = false;
    stats_.in_use += b->size;
    if (stats_.in_use > stats_.peak) stats_.peak = stats_.in_use;
    return reinterpret_cast<void*>(b->ptr);
  }

  // true when ptr was one of ours (now free), false when it came from alloc_cpu
  bool give(void* ptr) {
    std::lock_guard<std::mutex> lock(mu_);
    auto found = by_ptr_.find(reinterpret_cast<uintptr_t>(ptr));
    if (found == by_ptr_.end()) return false;
    Block* b = found->second;
    if (b->free) return true;  // never a tensor's: nothing to do
    stats_.in_use -= b->size;
    b->free = true;
    if (b->next != nullptr && b->next->free) {
      unlist(b->next);
      join_next(b);
    }
    if (b->prev != nullptr && b->prev->free) {
      b = b->prev;
      unlist(b);
      join_next(b);
    }
    list(b);
    return true;
  }

  // Unmap every wholly free segment and drop the pages of the other free blocks.
  void release() {
    std::lock_guard<std::mutex> lock(mu_);
    give_back();
    stats_.peak = stats_.in_use;
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  // fork: the child must not inherit a locked mutex; it gives the parent's free blocks back so
  // they stay the parent's alone (copy-on-write would otherwise copy every page the parent reuses)
  void lock() { mu_.lock(); }
  void unlock() { mu_.unlock(); }
  void after_fork_in_child() {
    give_back();
    mu_.unlock();
  }

 private:
  static void* map(size_t size) {
    if (size < kHuge * 2) {
      void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      return p == MAP_FAILED ? nullptr : p;
    }
    // over-map by one huge page and trim both ends, so the segment starts on a huge-page boundary
    const size_t span = size + kHuge;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = round_up(start, kHuge);
    if (aligned > start) munmap(raw, aligned - start);
    const uintptr_t end = aligned + size;
    if (start + span > end) munmap(reinterpret_cast<void*>(end), start + span - end);
    void* p = reinterpret_cast<void*>(aligned);
    madvise(p, size, MADV_HUGEPAGE);  // a hint: ignored where THP is off
    return p;
  }

  void list(Block* b) {
    free_.insert(FreeKey{b->size, b->ptr});
    stats_.cached += b->size;
  }

  void unlist(Block* b) {
    free_.erase(FreeKey{b->size, b->ptr});
    stats_.cached -= b->size;
  }

  // b takes in its next neighbour (both free, neither listed)
  void join_next(Block* b) {
    Block* n = b->next;
    b->size += n->size;
    b->next = n->next;
    if (n->next != nullptr) n->next->prev = b;
    by_ptr_.erase(n->ptr);
    delete n;
  }

  // unmap wholly free segments, largest first, until at most `limit` bytes stay mapped
  void evict_until(size_t limit) {
    for (auto it = free_.end(); it != free_.begin() && mapped_ > limit;) {
      --it;
      Block* b = by_ptr_.at(it->second);
      if (!b->whole()) continue;
      it = unmap(it);
      ++stats_.evictions;
    }
  }

  // unmap the wholly free segment at `it` in the free list; the entry after it
  std::set<FreeKey>::iterator unmap(std::set<FreeKey>::iterator it) {
    Block* b = by_ptr_.at(it->second);
    stats_.cached -= b->size;
    munmap(reinterpret_cast<void*>(b->ptr), b->size);
    mapped_ -= b->size;
    by_ptr_.erase(b->ptr);
    delete b;
    return free_.erase(it);
  }

  void give_back() {
    for (auto it = free_.begin(); it != free_.end();) {
      Block* b = by_ptr_.at(it->second);
      if (b->whole()) {
        it = unmap(it);
      } else {
        madvise(reinterpret_cast<void*>(b->ptr), b->size, MADV_DONTNEED);  // mapped, not resident
        ++it;
      }
    }
  }

  std::mutex mu_;
  std::set<FreeKey> free_;                       // free blocks, by size then address
  std::unordered_map<uintptr_t, Block*> by_ptr_;  // every block, free or not, by its address
  size_t mapped_ = 0;                            // bytes of all segments
  Stats stats_{};
};

BlockCache& cache() {
  static BlockCache* instance = new BlockCache();  // never destroyed: tensors may outlive exit
  return *instance;
}

// the raw deleter, for both kinds; tensors' small blocks carry c10::free_cpu itself, so their
// frees skip the cache's lock and lookup
void delete_block(void* ptr) {
  if (ptr != nullptr && !cache().give(ptr)) c10::free_cpu(ptr);
}

class CachingCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (nbytes < kLarge) {
      void* ptr = c10::alloc_cpu(nbytes);
      return {ptr, ptr, &c10::free_cpu, cpu};
    }
    void* ptr = cache().take(round_up(nbytes, kPage));
    TORCH_CHECK(ptr != nullptr, "imageblocks block cache: could not map ", nbytes, " bytes");
    return {ptr, ptr, &delete_block, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &delete_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

CachingCPUAllocator* installed = nullptr;

}  // namespace

extern "C" {

// Make this the CPU allocator of every tensor allocated from now on; 1 once installed.
int imageblocks_block_cache_install() {
  if (installed != nullptr) return 1;
  installed = new CachingCPUAllocator();
  pthread_atfork([] { cache().lock(); }, [] { cache().unlock(); },
                 [] { cache().after_fork_in_child(); });
  c10::SetCPUAllocator(installed, /*priority=*/100);
  return c10::GetCPUAllocator() == installed ? 1 : 0;
}

// Unmap every cached block (the memory in use by tensors stays).
void imageblocks_block_cache_release() { cache().release(); }

void imageblocks_block_cache_stats(Stats* out) { *out = cache().stats(); }
}
