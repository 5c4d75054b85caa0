// Resuming with another config: every changed key is listed; model and optimizer-type changes are
// refused, training-only settings pass, settings that change the training pass with a warning.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "core/error.h"
#include "io/config.h"
#include "io/config_diff.h"
#include "train/resume.h"

namespace dptrain {
namespace {

const std::string kConfig = std::string(DPTRAIN_SOURCE_DIR) + "/configs/mnist_cnn.yaml";

TEST(ConfigDiff, ListsEveryChangedLeafWithDottedKeys) {
  const Config a = load_config(kConfig);
  const Config b = load_config(kConfig, {"train.epochs=20", "model.layers.0.out_channels=16"});
  const std::vector<ConfigChange> changes = diff_configs(a, b);
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(describe(changes[0]), "model.layers.0.out_channels: 32 -> 16");
  EXPECT_EQ(describe(changes[1]), "train.epochs: 14 -> 20");
  EXPECT_TRUE(diff_configs(a, a).empty());
}

TEST(ResumeConfig, RunOnlySettingsPassAndAreSaid) {
  const Config saved = load_config(kConfig);
  const auto notes = check_resume_config(saved, load_config(kConfig, {"train.epochs=20", "checkpoint.keep=5"}), "ck");
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_EQ(notes[0], "checkpoint.keep: 3 -> 5");
  EXPECT_EQ(notes[1], "train.epochs: 14 -> 20");
}

TEST(ResumeConfig, TrainingChangesPassWithAWarning) {
  const Config saved = load_config(kConfig);
  const auto notes = check_resume_config(saved, load_config(kConfig, {"train.optimizer.lr=0.5"}), "ck");
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("train.optimizer.lr: 1 -> 0.5 (changes the training"), std::string::npos) << notes[0];
}

TEST(ResumeConfig, ModelOrOptimizerTypeChangesAreRefusedWithEveryDifference) {
  const Config saved = load_config(kConfig);
  try {
    check_resume_config(saved, load_config(kConfig, {"model.layers.7.out_features=64", "train.optimizer={type: sgd, lr: 0.01}"}),
                        "runs/x/ckpt-00000010.safetensors");
    FAIL() << "accepted";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("runs/x/ckpt-00000010.safetensors: was written for another model"), std::string::npos) << m;
    EXPECT_NE(m.find("model.layers.7.out_features: 128 -> 64"), std::string::npos) << m;
    EXPECT_NE(m.find("train.optimizer.type: adadelta -> sgd"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "one line: " << m;
  }
  // Another network entirely: the first six differences and a count of the rest, on one line.
  try {
    check_resume_config(saved, load_config(std::string(DPTRAIN_SOURCE_DIR) + "/configs/lenet5.yaml"), "ck");
    FAIL() << "accepted";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_NE(m.find(" more"), std::string::npos) << m;
    EXPECT_EQ(std::count(m.begin(), m.end(), ';'), 7) << m;  // "optimizer;" then six listed, the last before "and N more"
  }
}

// The planned run length sets the rates of cosine, onecycle and a linear decay over the run: there
// train.epochs changes the training; under a step schedule it does not.
TEST(ResumeConfig, EpochsChangeTheTrainingOfSchedulesThatSpanTheRun) {
  const std::string onecycle = "train.schedule={type: onecycle, max_lr: 0.1, cycle_momentum: false}";
  const Config saved = load_config(kConfig, {onecycle});
  const auto notes = check_resume_config(saved, load_config(kConfig, {onecycle, "train.epochs=20"}), "ck");
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("train.epochs: 14 -> 20 (changes the training"), std::string::npos) << notes[0];
}

// Whether SGD keeps a momentum buffer decides the checkpoint's optimizer tensors.
TEST(ResumeConfig, SgdMomentumBufferAppearingIsRefused) {
  const std::string sgd = "train.optimizer={type: sgd, lr: 0.01}";
  const Config saved = load_config(kConfig, {sgd});
  try {
    check_resume_config(saved, load_config(kConfig, {sgd, "train.schedule={type: onecycle, max_lr: 0.1}"}), "ck");
    FAIL() << "accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("SGD's momentum buffer: none -> kept"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(check_resume_config(saved, load_config(kConfig, {sgd, "train.optimizer.lr=0.02"}), "ck"));
}

}  // namespace
}  // namespace dptrain
